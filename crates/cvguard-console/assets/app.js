// The console's shell: sign-in, the hash routes, the header, and the one incident stream
// every page listens to.

import { ApiError, IncidentStream, getJson, session, setToken, token, whenUnauthorized } from "./api.js";
import { fill, h, message } from "./ui.js";
import { incidentPage, incidentsPage } from "./incidents.js";
import { healthPage, keysPage, rulesPage } from "./views.js";

// Errors the page did not catch, kept for the browser tests (and shown to the analyst).
window.cvguardErrors = [];
window.addEventListener("error", (e) => window.cvguardErrors.push(String(e.message || e)));
document.addEventListener("securitypolicyviolation", (e) => window.cvguardErrors.push(`CSP: ${e.violatedDirective} ${e.blockedURI}`));
window.addEventListener("unhandledrejection", (e) => window.cvguardErrors.push(String(e.reason && e.reason.message ? e.reason.message : e.reason)));

const main = document.getElementById("main");
const top = document.getElementById("top");

let stream = null;
let cleanup = null;

function startStream() {
  if (stream) stream.stop();
  const live = document.getElementById("live");
  stream = new IncidentStream(
    (incident) => {
      for (const f of session.listeners) f(incident);
    },
    (state) => {
      live.textContent = state === "live" ? "live" : state === "reconnecting" ? "reconnecting…" : "no live updates";
      live.className = `live ${state}`;
    },
  );
  stream.start();
}

function signOut(why) {
  if (stream) stream.stop();
  stream = null;
  setToken("");
  session.role = "";
  showLogin(why);
}

function showLogin(why) {
  if (cleanup) cleanup();
  cleanup = null;
  top.hidden = true;
  const input = h("input", { id: "token", type: "password", autocomplete: "off", spellcheck: "false", placeholder: "cvg_…", required: true });
  const status = h("div");
  const form = h(
    "form.login",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        setToken(input.value.trim());
        fill(status, message("info", "Checking…"));
        const refused = await signIn(true);
        if (refused) fill(status, message("error", `That token was refused: ${refused}`));
      },
    },
    h("h1", "cvguard console"),
    h("label", { for: "token" }, "API token"),
    input,
    h("p.hint", "An administrator makes one with ", h("code", "cvguard token new --role viewer --name YOUR-NAME"), " (responder to act on incidents) and adds its config entry; paste the token it showed once."),
    h("button", { type: "submit", id: "signin" }, "Sign in"),
    status,
  );
  fill(main, form);
  if (why) fill(status, message("error", why));
  input.focus();
}

/** Asks the API who the token is; signs in, or says why not (the API's words). */
async function signIn(fromForm) {
  try {
    const me = await getJson("/v1/whoami", { quietAuth: true });
    session.role = me.role;
    session.name = me.name;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      if (fromForm) {
        setToken("");
        return e.message;
      }
      // 403 without a token: no token is configured and this browser is not on loopback.
      showLogin(e.status === 403 ? e.message : token() ? "Your session has ended; sign in again." : "");
      return e.message;
    }
    fill(main, message("error", `The API did not answer: ${e.message}`));
    return "";
  }
  if (session.role === "ingest") {
    setToken("");
    showLogin("An ingest token only posts events; sign in with a viewer, responder or admin token.");
    return "an ingest token";
  }
  fill(document.getElementById("whoami"), h("span", session.name), " ", h("span.badge.role", session.role));
  document.getElementById("signout").hidden = !token();
  top.hidden = false;
  startStream();
  route();
  return "";
}

function route() {
  if (!session.role) return;
  if (cleanup) cleanup();
  cleanup = null;
  session.listeners.clear();
  const hash = location.hash.replace(/^#\/?/, "") || "incidents";
  const [path, query] = hash.split("?");
  const parts = path.split("/").map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === parts[0]);
  const page = {
    incidents: () => (parts[1] ? incidentPage(main, parts[1]) : incidentsPage(main, params)),
    keys: () => keysPage(main, parts[1], parts.slice(2).join("/")),
    rules: () => rulesPage(main),
    health: () => healthPage(main),
  }[parts[0]];
  if (!page) {
    fill(main, message("error", `No page “${parts[0]}”.`));
    return;
  }
  cleanup = page() || null;
}

whenUnauthorized((detail) => signOut(`Signed out: ${detail || "the API no longer accepts this token"}.`));
window.addEventListener("hashchange", route);
document.getElementById("signout").addEventListener("click", () => signOut(""));
signIn(false);
