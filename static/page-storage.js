// What the page remembers, and where. The credential arrives in the link's fragment
// (#token=… for a user token, #invite=… for an interview's invite; ?token=… still works for
// old links), which browsers never send to a server; it is read once and removed from the
// address bar (and so from the history and from anything copied off the screen).
//
// Everything is kept in this tab's sessionStorage only, never in localStorage: a shared
// computer must not hand the next person this candidate's credential or interview. A reload
// finds it there (to resume a live interview, or to show that it ended); closing the tab
// forgets it.

const TOKEN_KEY = "interviewToken";
const SESSION_KEY = "interviewSession";
const ENDED_KEY = "interviewEnded";
const MIC_KEY = "interviewMicrophone";
const TAB_KEY = "interviewTab";
const LINK_NAMES = ["invite", "token"];

// {token, fromLink} or null. A credential read from the address replaces whatever this
// tab held before (a new link is a new start).
export function credentialFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  let token = null;
  for (const name of LINK_NAMES) {
    token = token || fragment.get(name) || query.get(name);
  }
  if (LINK_NAMES.some((name) => fragment.has(name) || query.has(name))) {
    for (const name of LINK_NAMES) { fragment.delete(name); query.delete(name); }
    const search = query.toString() ? `?${query}` : "";
    const hash = fragment.toString() ? `#${fragment}` : "";
    history.replaceState(null, "", `${location.pathname}${search}${hash}`);
  }
  return token ? token.trim() : null;
}

function readJson(key) {
  try { return JSON.parse(sessionStorage.getItem(key) || "null"); } catch (_) { return null; }
}

export const store = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  setToken: (token) => sessionStorage.setItem(TOKEN_KEY, token),

  // The interview in progress: {session_id, resume_token, grace_s, ice_servers, time_left}.
  session: () => {
    const s = readJson(SESSION_KEY);
    return s && typeof s.session_id === "string" && typeof s.resume_token === "string" ? s : null;
  },
  setSession: (s) => sessionStorage.setItem(SESSION_KEY, JSON.stringify(s)),
  clearSession: () => sessionStorage.removeItem(SESSION_KEY),

  // How the last interview of this tab ended: {reason, message}.
  ended: () => readJson(ENDED_KEY),
  setEnded: (e) => sessionStorage.setItem(ENDED_KEY, JSON.stringify(e)),
  clearEnded: () => sessionStorage.removeItem(ENDED_KEY),

  // This tab's id (page-tab.js): random, nothing else. A duplicated tab starts with a copy.
  tab: () => sessionStorage.getItem(TAB_KEY),
  setTab: (id) => sessionStorage.setItem(TAB_KEY, id),

  microphone: () => sessionStorage.getItem(MIC_KEY),
  setMicrophone: (deviceId) => sessionStorage.setItem(MIC_KEY, deviceId),

  // A new link starts afresh: nothing of an earlier interview in this tab applies to it.
  startOver: (token) => {
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(ENDED_KEY);
    sessionStorage.setItem(TOKEN_KEY, token);
  },
};

// Written by earlier versions of this page.
export function forgetLegacyStorage() { localStorage.removeItem(TOKEN_KEY); }
