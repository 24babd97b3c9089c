// The public API, called with the analyst's token. The token lives in sessionStorage only:
// never in a URL, never in a cookie, gone when the tab closes.

const TOKEN_KEY = "cvguard.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Who is signed in, and the incident stream's listeners: what the pages share. */
export const session = {
  role: "",
  name: "",
  /** responder and admin may change incidents (the API checks it again). */
  canAct() {
    return this.role === "responder" || this.role === "admin";
  },
  listeners: new Set(),
};

/** An answer the API refused, with the problem's detail and status. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

// Called on a 401 anywhere: the page goes back to the sign-in form.
let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set("Authorization", `Bearer ${t}`);
  return h;
}

/** fetch() with the token; the Response, or an ApiError for any status but 2xx. */
export async function request(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: headers(options.headers),
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  if (response.ok) return response;
  let detail = "";
  try {
    const body = await response.json();
    detail = body.detail || body.error || "";
  } catch {
    detail = "";
  }
  if (response.status === 401 && !options.quietAuth) onUnauthorized(detail);
  throw new ApiError(response.status, detail || `${response.status} ${response.statusText}`);
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export async function postJson(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  return response.json();
}

/** Builds `path?k=v&...` from an object, skipping empty values. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** Fetches a file with the token and hands it to the browser as a download. */
export async function download(path, fallbackName) {
  const response = await request(path);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = match ? match[1] : fallbackName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return blob.size;
}

/**
 * The incident stream (`GET /v1/incidents/stream`, server-sent events), read with fetch()
 * so the Authorization header goes with it (EventSource cannot send one). Reconnects with
 * `Last-Event-ID` after a pause that grows to 30 s. `onEvent(incident)` for each change,
 * `onState("live" | "reconnecting" | "unavailable")` as the connection goes.
 */
export class IncidentStream {
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = "";
    this.stopped = false;
    this.controller = null;
    this.pause = 1000;
  }

  start() {
    this.stopped = false;
    this.loop();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async loop() {
    while (!this.stopped) {
      try {
        await this.readOnce();
        if (this.stopped) return;
        this.onState("reconnecting");
      } catch (e) {
        if (this.stopped) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
          this.onState("unavailable");
          return;
        }
        this.onState(e instanceof ApiError && e.status === 404 ? "unavailable" : "reconnecting");
      }
      await new Promise((r) => setTimeout(r, this.pause));
      this.pause = Math.min(this.pause * 2, 30_000);
    }
  }

  async readOnce() {
    this.controller = new AbortController();
    const extra = { Accept: "text/event-stream" };
    if (this.lastId) extra["Last-Event-ID"] = this.lastId;
    const response = await request("/v1/incidents/stream", {
      headers: extra,
      signal: this.controller.signal,
    });
    this.onState("live");
    this.pause = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  // One event block: `id:`, `event:`, `data:` lines; comments (`: keep-alive`) skipped.
  dispatch(block) {
    let id = null;
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (id !== null) this.lastId = id;
    if (event !== "incident" || data.length === 0) return;
    try {
      this.onEvent(JSON.parse(data.join("\n")));
    } catch (e) {
      console.warn("cvguard: an incident event that is not JSON", e);
    }
  }
}
