// A product's page written against OpenAI's Realtime API with the Agents SDK: only the base
// URL points elsewhere (the relay, or `relay simulate`), and the page is served from an origin
// of its own. The browser tests drive it through `window.interview` and read its `log`.
(() => {
  const log = { events: [], errors: [], connectMs: null, callId: null, secret: null };
  let session = null;
  let transport = null;

  function describe(error) {
    if (error instanceof Error) return `${error.name}: ${error.message}`;
    try {
      return JSON.stringify(error);
    } catch {
      return String(error);
    }
  }

  // What a product's page does with a candidate's credential against the relay: ask its
  // OpenAI-compatible client_secrets for an ek_ (the relay's own), saying the recording
  // notice was shown.
  async function clientSecret(url, credential, instructions) {
    const response = await fetch(url, {
      method: 'POST',
      headers: { Authorization: `Bearer ${credential}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({
        session: { type: 'realtime', model: 'gpt-realtime', instructions },
        recording_notice_shown: true,
      }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`client_secrets ${response.status}: ${body.error?.message}`);
    return body.value;
  }

  async function start({ baseUrl, secretUrl, credential, apiKey, instructions }) {
    const key = apiKey ?? (await clientSecret(secretUrl, credential, instructions));
    log.secret = key;
    const { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession } = window.AgentsRealtime;
    transport = new OpenAIRealtimeWebRTC({
      baseUrl,
      audioElement: document.getElementById('speaker'),
    });
    const agent = new RealtimeAgent({ name: 'Interviewer', instructions });
    session = new RealtimeSession(agent, {
      transport,
      model: 'gpt-realtime',
      config: { audio: { input: { transcription: { model: 'gpt-realtime-whisper' } } } },
    });
    session.on('transport_event', (event) => log.events.push(event));
    session.on('error', (error) => log.errors.push(describe(error)));
    const started = performance.now();
    await session.connect({ apiKey: key });
    log.connectMs = performance.now() - started;
    log.callId = transport.callId ?? null;
    return { connectMs: log.connectMs, callId: log.callId };
  }

  // The energy of the audio received so far (WebRTC's own statistics): the interviewer
  // was heard when it grows.
  async function heardEnergy() {
    const pc = transport?.connectionState?.peerConnection;
    if (!pc) return 0;
    let energy = 0;
    (await pc.getStats()).forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'audio') {
        energy += report.totalAudioEnergy ?? 0;
      }
    });
    return energy;
  }

  // A product's page may end the call as OpenAI's API lets a client: hang it up by id.
  async function hangUp(url) {
    const response = await fetch(url, {
      method: 'POST',
      headers: { Authorization: `Bearer ${log.secret}` },
    });
    session?.close();
    return response.status;
  }

  window.interview = { start, heardEnergy, hangUp, log };
})();
