// One WebRTC connection to the relay: the microphone's track out, the interviewer's audio in,
// and the "oai-events" data channel both ways. A resume is a new Call on the same session.
//
// The call reports a drop once (onDrop): the data channel closed, the connection failed, or
// it stayed disconnected for DISCONNECTED_GRACE_MS (ICE often recovers from a short blip by
// itself). A call the page closes itself reports nothing.

const ICE_GATHER_TIMEOUT_MS = 3000;
const DISCONNECTED_GRACE_MS = 2000;

export class Call {
  constructor({ iceServers, track, stream, onEvent, onRemoteStream, onDrop }) {
    this.onEvent = onEvent;
    this.onDrop = onDrop;
    this.closed = false;
    this.dropped = false;
    this.disconnectTimer = null;
    this.pc = new RTCPeerConnection({ iceServers: iceServers || [] });
    this.sender = this.pc.addTrack(track, stream);
    this.pc.ontrack = (e) => onRemoteStream(e.streams[0] || new MediaStream([e.track]));
    this.channel = this.pc.createDataChannel("oai-events");
    this.channel.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch (_) { return; /* not JSON: ignored */ }
      this.onEvent(event);
    };
    this.channel.onclose = () => this.drop("channel closed");
    this.pc.onconnectionstatechange = () => this.onStateChange();
    this.connected = new Promise((resolve, reject) => {
      this.resolveConnected = resolve;
      this.rejectConnected = reject;
    });
    this.connected.catch(() => {}); // a failure is also reported through onDrop
  }

  onStateChange() {
    const state = this.pc.connectionState;
    clearTimeout(this.disconnectTimer);
    if (state === "connected") this.resolveConnected();
    else if (state === "failed") this.drop("connection failed");
    else if (state === "disconnected") {
      this.disconnectTimer = setTimeout(() => this.drop("connection lost"), DISCONNECTED_GRACE_MS);
    }
  }

  drop(why) {
    if (this.closed || this.dropped) return;
    this.dropped = true;
    this.rejectConnected(new Error(why));
    this.onDrop(why);
  }

  // The offer, once ICE gathering is complete: the relay needs no trickle, and a bounded
  // wait keeps a slow STUN server from stalling the start.
  async offer() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    const pc = this.pc;
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
        const check = () => { if (pc.iceGatheringState === "complete") done(); };
        pc.addEventListener("icegatheringstatechange", check);
        setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      });
    }
    return pc.localDescription.sdp;
  }

  async answer(sdp) { await this.pc.setRemoteDescription({ type: "answer", sdp }); }

  // Resolves once the connection is up; rejects if it drops first or takes longer than
  // timeoutMs.
  waitConnected(timeoutMs) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("connection timed out")), timeoutMs);
    });
    return Promise.race([this.connected, timeout]).finally(() => clearTimeout(timer));
  }

  send(event) {
    if (this.channel.readyState === "open") this.channel.send(JSON.stringify(event));
  }

  replaceTrack(track) { return this.sender.replaceTrack(track); }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.disconnectTimer);
    this.rejectConnected(new Error("closed"));
    this.pc.close();
  }
}
