// What the browser tests of the OpenAI-compatible endpoints load: OpenAI's Agents SDK, as a
// product's page uses it. Bundled with esbuild at test time (tests/e2e/test_openai_agents_sdk.py)
// into one script exposing `AgentsRealtime`.
export { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession } from '@openai/agents-realtime';
