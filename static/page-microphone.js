// The candidate's microphone: getting it (by device), muting it, listing the devices, and a
// level meter fed by the very track the interview sends, so a muted or silent microphone
// shows as such.

// Browsers expose navigator.mediaDevices only in secure contexts (https://, or localhost on
// this computer): elsewhere getUserMedia does not exist and would fail with a raw
// TypeError. Returns a problem code for microphoneProblem(), or null.
export function microphoneUnavailable() {
  if (window.isSecureContext === false) return "insecure";
  if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== "function") {
    return "no_api";
  }
  return null;
}

// "granted", "denied", "prompt", or null where the browser does not say (Firefox and
// Safari may not know the "microphone" permission name).
export async function microphonePermission() {
  try {
    const status = await navigator.permissions.query({ name: "microphone" });
    return status.state;
  } catch (_) {
    return null;
  }
}

export class Microphone {
  constructor() {
    this.stream = null;
    this.muted = false;
  }

  get track() { return this.stream ? this.stream.getAudioTracks()[0] || null : null; }

  get deviceId() {
    const track = this.track;
    return track ? track.getSettings().deviceId || "" : "";
  }

  // Opens the device (the browser's default without one), replacing the current stream.
  // A remembered device that is gone falls back to the default. Rejects with
  // getUserMedia's DOMException.
  async open(deviceId) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(
        { audio: deviceId ? { deviceId: { exact: deviceId } } : true });
    } catch (err) {
      if (!deviceId || (err.name !== "OverconstrainedError" && err.name !== "NotFoundError")) throw err;
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    }
    const track = stream.getAudioTracks()[0];
    if (!track) {
      stream.getTracks().forEach((t) => t.stop());
      throw new DOMException("No audio track", "NotFoundError");
    }
    this.close();
    this.stream = stream;
    track.enabled = !this.muted;
    return track;
  }

  // Muting disables the track: the browser then sends silence, so nothing the candidate
  // says reaches the relay, while the connection and the interview go on.
  setMuted(muted) {
    this.muted = muted;
    const track = this.track;
    if (track) track.enabled = !muted;
  }

  async devices() {
    const all = await navigator.mediaDevices.enumerateDevices();
    return all.filter((d) => d.kind === "audioinput");
  }

  close() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }
}

// Below this level (dBFS) the meter reads empty; speech at a normal distance is well above.
const FLOOR_DB = -60;
// A level the candidate has to reach once for "we can hear you".
const HEARD_DB = -45;
const POLL_MS = 100;

// Polls an AnalyserNode on a timer (not requestAnimationFrame, which stops in a background
// tab) and shows the level in a <meter> (0..1 over FLOOR_DB..0 dBFS).
export class LevelMeter {
  constructor(meter, onHeard) {
    this.meter = meter;
    this.onHeard = onHeard;
    this.context = null;
    this.source = null;
    this.analyser = null;
    this.timer = null;
    this.shown = 0;
    this.samples = null;
  }

  attach(stream) {
    this.detach();
    if (!this.context) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) return;
      this.context = new Context();
      this.analyser = this.context.createAnalyser();
      this.analyser.fftSize = 2048;
      this.samples = new Float32Array(this.analyser.fftSize);
    }
    // Without a click first, browsers start an AudioContext suspended: the next click on
    // the page (Check, Start, anything) wakes it.
    if (this.context.state === "suspended") {
      const wake = () => this.context.resume().catch(() => {});
      document.addEventListener("click", wake, { once: true });
      wake();
    }
    this.source = this.context.createMediaStreamSource(stream);
    this.source.connect(this.analyser);
    this.timer = setInterval(() => this.poll(), POLL_MS);
  }

  poll() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    const rms = Math.sqrt(sum / this.samples.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
    const level = Math.max(0, Math.min(1, (db - FLOOR_DB) / -FLOOR_DB));
    // Rises at once, falls gently: easier to read than the raw level.
    this.shown = Math.max(level, this.shown * 0.7);
    this.meter.value = this.shown;
    if (db >= HEARD_DB) this.onHeard();
  }

  detach() {
    clearInterval(this.timer);
    this.timer = null;
    if (this.source) this.source.disconnect();
    this.source = null;
    this.shown = 0;
    this.meter.value = 0;
  }
}
