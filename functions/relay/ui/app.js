// DevGem's web UI: one page, plain ES modules, no build step.
//
// The token comes from the URL fragment (`#token=…`), is kept in sessionStorage and removed from
// the address bar. The conversation is one session of events streamed over `/ws/chat`
// (docs/protocol.md): the page keeps what it rendered in memory, resumes after the last `seq` it
// rendered when the socket reconnects, and replays the whole session on a page load. Everything
// that comes from the server is rendered as text (markdown.js builds nodes; no innerHTML here).

import { renderMarkdown, externalLink, safeUrl } from "/ui/markdown.js";

const TOKEN_KEY = "devgem.token";
const SESSION_KEY = "devgem.session";
const LAST_SEQ_KEY = "devgem.lastSeq";
const MAX_LOG_LINES = 2000;
const MAX_MESSAGE_BYTES = 8192;
const STAGES = [
  ["repo_access", "Source"],
  ["analysis", "Analysis"],
  ["dockerfile", "Dockerfile"],
  ["env_config", "Environment"],
  ["security_scan", "Security scan"],
  ["build", "Build"],
  ["deploy", "Deploy"],
];
const STAGE_STATUSES = new Set(["pending", "running", "done", "failed", "skipped"]);
const RUNNING = new Set(["requested", "analyzing", "building", "deploying", "verifying"]);
const STATE_LABELS = {
  requested: "Queued",
  analyzing: "Analyzing",
  building: "Building",
  deploying: "Deploying",
  verifying: "Verifying",
  live: "Live",
  failed: "Failed",
  aborted: "Aborted",
};

const $ = (id) => document.getElementById(id);

/** Creates an element: `attrs` are attributes (`class`, `text` and `data-*` included). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** Log text as it should read: no terminal escapes, only what a carriage return left. */
function cleanLine(line) {
  const text = String(line ?? "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
  const cr = text.lastIndexOf("\r", text.length - 2);
  return (cr >= 0 ? text.slice(cr + 1) : text).replace(/\r$/, "");
}

function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function timeAgo(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return new Date(t).toLocaleDateString();
}

function clockTime(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function shortId(id) {
  return String(id ?? "").slice(-8);
}

function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

// ---------------------------------------------------------------------------------------------
// State

const app = {
  token: null,
  me: null,
  sessionId: localStorage.getItem(SESSION_KEY),
  // On a page load the whole session is replayed: what was rendered before is gone.
  lastSeq: 0,
  ws: null,
  ready: false,
  attempt: 0,
  reconnectTimer: null,
  countdown: null,
  lastFrameAt: 0,
  outbox: [],
  // Sent on a socket but not echoed yet: sent again (same client_message_id) after a reconnect.
  unconfirmed: [],
  cards: new Map(),
  alerts: new Map(),
  listed: new Map(),
  serving: new Map(),
  follow: true,
  panel: null,
};

// A read-only view for debugging from the console (and for tests).
globalThis.devgem = Object.freeze({
  get sessionId() {
    return app.sessionId;
  },
  get lastSeq() {
    return app.lastSeq;
  },
  get connected() {
    return app.ready;
  },
});

// ---------------------------------------------------------------------------------------------
// REST

class ApiError extends Error {
  constructor(message, status, code, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${app.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError("DevGem cannot be reached; check that it is running.", 0, "network");
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const message = json?.error?.message ?? json?.message ?? (text.trim() || `${response.status} ${response.statusText}`);
    const error = new ApiError(message, response.status, json?.error?.code, json);
    if (response.status === 401) signOut(message);
    throw error;
  }
  return json;
}

// ---------------------------------------------------------------------------------------------
// Token and sign-in

function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showLogin(message) {
  $("login").hidden = false;
  $("shell").setAttribute("aria-hidden", "true");
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  $("login-token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  app.token = null;
  closeSocket();
  setConnection("closed", "Signed out");
  showLogin(message);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("login-token").value.trim();
  if (!token) return;
  app.token = token;
  try {
    app.me = await api("GET", "/api/me");
  } catch (error) {
    app.token = null;
    showLogin(error.status === 401 ? "That token was not accepted. Check it and try again." : error.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-token").value = "";
  $("login").hidden = true;
  $("shell").removeAttribute("aria-hidden");
  begin();
});

// ---------------------------------------------------------------------------------------------
// Connection

function setConnection(state, label) {
  const node = $("connection");
  node.dataset.state = state;
  node.querySelector(".connection-label").textContent = label;
  node.title = label;
}

function closeSocket() {
  clearTimeout(app.reconnectTimer);
  clearInterval(app.countdown);
  app.reconnectTimer = null;
  const ws = app.ws;
  app.ws = null;
  app.ready = false;
  if (ws) {
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close(1000, "bye");
    } catch {
      // already closed
    }
  }
}

function connect() {
  if (!app.token) return;
  closeSocket();
  hideNotice();
  setConnection("connecting", app.attempt ? "Reconnecting…" : "Connecting…");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws/chat`);
  app.ws = ws;
  let refusal = null;
  let refusalTimer = null;
  ws.onopen = () => {
    const auth = { type: "auth", token: app.token, after: app.lastSeq };
    if (app.sessionId) auth.session_id = app.sessionId;
    ws.send(JSON.stringify(auth));
  };
  ws.onmessage = (message) => {
    app.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    if (frame?.type === "error" && frame.seq == null) {
      // An error frame either says why the socket is about to close, or refuses one message
      // and the socket stays open: which one shows when the close does or does not follow.
      refusal = frame.data?.message ?? null;
      clearTimeout(refusalTimer);
      refusalTimer = setTimeout(() => {
        if (app.ws !== ws) return;
        refusal = null;
        renderError(frame.data ?? {});
        // The message it refused will not be echoed.
        const first = app.unconfirmed.shift();
        if (first) timeline.querySelector(`.message.pending[data-client-id="${CSS.escape(first.client_message_id)}"]`)?.remove();
      }, 500);
      return;
    }
    onFrame(frame, ws);
  };
  ws.onclose = (event) => {
    clearTimeout(refusalTimer);
    if (app.ws !== ws) return;
    app.ws = null;
    app.ready = false;
    onClose(event.code, refusal || event.reason);
  };
}

function onClose(code, reason) {
  if (code === 4401) {
    signOut(reason || "Your token was not accepted; paste a valid one.");
    return;
  }
  if (code === 4403) {
    setConnection("closed", "Not connected");
    showNotice(reason || "This conversation is not yours, or it no longer exists.", "Start a new conversation", newChat);
    return;
  }
  if (code === 4400) {
    setConnection("closed", "Not connected");
    showNotice(reason || "The server did not understand this page's messages.", "Reconnect", () => {
      app.attempt = 0;
      connect();
    });
    return;
  }
  scheduleReconnect(code === 4408 ? 0 : undefined);
}

function scheduleReconnect(delay) {
  clearTimeout(app.reconnectTimer);
  clearInterval(app.countdown);
  const base = Math.min(15000, 500 * 2 ** Math.min(app.attempt, 5));
  const wait = delay ?? Math.round(base * (0.75 + Math.random() * 0.5));
  app.attempt += 1;
  const until = Date.now() + wait;
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    setConnection("connecting", left > 0 ? `Reconnecting in ${left}s` : "Reconnecting…");
  };
  tick();
  app.countdown = setInterval(tick, 1000);
  app.reconnectTimer = setTimeout(connect, wait);
}

// A socket that has heard nothing (not even a ping, every 30 s) for this long is dead.
setInterval(() => {
  if (app.ws && app.ready && Date.now() - app.lastFrameAt > 75000) {
    const ws = app.ws;
    closeSocket();
    ws.close?.();
    scheduleReconnect(0);
  }
}, 10000);

window.addEventListener("online", () => {
  if (app.token && !app.ws) {
    app.attempt = 0;
    connect();
  }
});

function onFrame(frame, ws) {
  if (!frame || typeof frame !== "object") return;
  switch (frame.type) {
    case "ready": {
      const session = frame.session_id ?? frame.data?.session_id;
      if (session && app.sessionId && session !== app.sessionId) resetConversation();
      if (session) {
        app.sessionId = session;
        localStorage.setItem(SESSION_KEY, session);
      }
      app.ready = true;
      app.attempt = 0;
      // What the last socket took but never echoed goes again; the relay answers an id once.
      app.outbox = [...app.unconfirmed, ...app.outbox];
      app.unconfirmed = [];
      setConnection("open", "Connected");
      flushOutbox();
      return;
    }
    case "ping":
      ws.send(JSON.stringify({ type: "pong" }));
      return;
    default:
      break;
  }
  if (typeof frame.seq !== "number") return;
  // Exactly once: a frame already rendered (a resend around a reconnect) is dropped.
  if (frame.seq <= app.lastSeq) return;
  app.lastSeq = frame.seq;
  localStorage.setItem(LAST_SEQ_KEY, String(frame.seq));
  try {
    renderEvent(frame);
  } catch (error) {
    console.error("could not render event", frame, error);
  }
}

// ---------------------------------------------------------------------------------------------
// Timeline

const timeline = $("timeline");

timeline.addEventListener("scroll", () => {
  app.follow = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 120;
});

let scrollQueued = false;
function scrollToEnd(force = false) {
  if (!(app.follow || force) || scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    timeline.scrollTop = timeline.scrollHeight;
  });
}

function append(node) {
  $("welcome").hidden = true;
  timeline.append(node);
  scrollToEnd();
}

function resetConversation() {
  for (const card of app.cards.values()) card.root.remove();
  app.cards.clear();
  for (const alert of app.alerts.values()) alert.remove();
  app.alerts.clear();
  for (const node of [...timeline.children]) if (node.id !== "welcome") node.remove();
  $("welcome").hidden = false;
  app.lastSeq = 0;
  localStorage.removeItem(LAST_SEQ_KEY);
}

function newChat() {
  closeSocket();
  resetConversation();
  app.sessionId = null;
  localStorage.removeItem(SESSION_KEY);
  app.outbox = [];
  app.unconfirmed = [];
  app.attempt = 0;
  connect();
  $("chat-input").focus();
}

function renderEvent(event) {
  const data = event.data ?? {};
  switch (event.type) {
    case "message":
      renderMessage(data.role === "user" ? "user" : "assistant", data.text, event);
      break;
    case "ai_thought":
      renderThought(data.text, event);
      break;
    case "analysis":
      if (data.deployment_id) card(data.deployment_id, event).analysis(data);
      else if (data.text) renderThought(data.text, event);
      break;
    case "deployment_started":
      card(data.deployment_id, event).started(data, event);
      refreshDeploymentsSoon();
      break;
    case "deployment_progress":
      card(data.deployment_id, event).progress(data, event);
      break;
    case "deployment_update":
      card(data.deployment_id, event).update(data, event);
      break;
    case "build_log":
      card(data.deployment_id, event).buildLog(data);
      break;
    case "deployment_complete":
      card(data.deployment_id, event).complete(data, event);
      refreshDeploymentsSoon();
      break;
    case "monitoring_alert":
      renderAlert(data, event);
      break;
    case "error":
      renderError(data);
      break;
    default:
      break;
  }
}

function renderMessage(role, text, event) {
  if (role === "user" && app.unconfirmed.length) {
    // The echo of a message sent from here replaces its pending copy. (Secret values come back
    // masked, so a message that matches no text confirms the oldest one.)
    const at = app.unconfirmed.findIndex((m) => m.text === text);
    const [confirmed] = app.unconfirmed.splice(at === -1 ? 0 : at, 1);
    timeline.querySelector(`.message.pending[data-client-id="${CSS.escape(confirmed.client_message_id)}"]`)?.remove();
  }
  const body = el("div", { class: "message-body markdown" });
  body.append(renderMarkdown(text));
  const node = el(
    "article",
    { class: `message ${role}`, "data-testid": "message", "data-role": role, "data-seq": event?.seq, title: clockTime(event?.ts) },
    role === "assistant" ? el("span", { class: "avatar", "aria-hidden": "true" }) : null,
    body,
  );
  const last = timeline.lastElementChild;
  const introduced = role === "assistant" && event?.correlation_id && [...app.cards.values()].find((c) => c.root === last && c.correlationId === event.correlation_id);
  if (introduced) {
    // "Deploying … as py-flask" reads before the card it announces.
    timeline.insertBefore(node, last);
    scrollToEnd();
  } else {
    append(node);
  }
  if (role === "user") scrollToEnd(true);
}

function renderThought(text, event) {
  if (!text) return;
  append(el("div", { class: "thought", "data-testid": "thought", "data-seq": event?.seq }, el("span", { class: "thought-icon", "aria-hidden": "true" }), el("span", { text })));
}

function renderError(data) {
  const node = el(
    "div",
    { class: "event-error", "data-testid": "event-error", role: "alert" },
    el("strong", { text: "Error" }),
    el("span", { text: data.message ?? "Something went wrong." }),
  );
  append(node);
}

// ---------------------------------------------------------------------------------------------
// Deployment cards

function card(id, event) {
  const key = String(id ?? "unknown");
  let existing = app.cards.get(key);
  if (!existing) {
    existing = new DeploymentCard(key, event?.correlation_id);
    app.cards.set(key, existing);
    append(existing.root);
    if (event?.ts) existing.startMs = Date.parse(event.ts);
  }
  return existing;
}

class DeploymentCard {
  constructor(id, correlationId) {
    this.id = id;
    this.correlationId = correlationId ?? null;
    this.percent = 0;
    this.state = "requested";
    this.service = null;
    this.startMs = null;
    this.endMs = null;
    this.ended = false;
    this.builds = new Map();
    this.lastBuild = null;
    this.lines = 0;
    this.dropped = 0;
    this.logToggled = false;

    this.serviceEl = el("h3", { class: "card-service", text: "Deployment" });
    this.badge = el("span", { class: "badge", "data-testid": "deployment-state" });
    this.elapsedEl = el("span", { class: "elapsed mono", "data-testid": "elapsed", title: "Elapsed time" });
    this.sourceEl = el("div", { class: "card-source mono" });
    this.fill = el("div", { class: "progress-fill" });
    this.bar = el(
      "div",
      { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0, "aria-label": "Progress", "data-testid": "progress-bar" },
      this.fill,
    );
    this.percentEl = el("span", { class: "percent mono", text: "0%" });
    this.stageEls = new Map();
    const stages = el("ol", { class: "stages" });
    for (const [stage, label] of STAGES) {
      const li = el("li", { class: "stage", "data-testid": "stage", "data-stage": stage, "data-status": "pending" }, el("span", { class: "stage-icon", "aria-hidden": "true" }), el("span", { class: "stage-label", text: label }));
      li.title = `${label}: pending`;
      this.stageEls.set(stage, li);
      stages.append(li);
    }
    this.statusEl = el("p", { class: "card-status", "data-testid": "card-status" });
    this.factsEl = el("div", { class: "facts", hidden: true });
    this.notesEl = el("ul", { class: "notes", hidden: true });
    this.log = el("div", { class: "log build-log", "data-testid": "build-log", tabindex: 0, role: "log", "aria-label": "Build log" });
    this.logCount = el("span", { class: "log-count" });
    const summary = el("summary", {}, el("span", { text: "Build log" }), this.logCount);
    // Once the user opens or closes the log, the page leaves it as they chose.
    summary.addEventListener("click", () => (this.logToggled = true));
    this.logBox = el("details", { class: "log-box", hidden: true, open: true }, summary, this.log);
    this.outcome = el("div", { class: "outcome", hidden: true });
    this.errorEl = el("p", { class: "error-text", hidden: true, role: "alert" });
    this.abortButton = el("button", { class: "button danger small", type: "button", "data-testid": "abort", text: "Abort" });
    this.abortButton.addEventListener("click", () => this.abort());
    const logsButton = el("button", { class: "button ghost small", type: "button", "data-testid": "open-logs", text: "Logs" });
    logsButton.addEventListener("click", () => openPanel(this.id, "logs"));
    const envButton = el("button", { class: "button ghost small", type: "button", "data-testid": "open-env", text: "Environment" });
    envButton.addEventListener("click", () => openPanel(this.id, "env"));

    this.card = el(
      "article",
      { class: "card deployment", "data-testid": "deployment-card", "data-deployment-id": id, "data-state": "requested" },
      el("header", { class: "card-head" }, el("div", { class: "card-title" }, el("span", { class: "service-mark", "aria-hidden": "true" }), this.serviceEl, this.badge), this.elapsedEl),
      this.sourceEl,
      el("div", { class: "progress-row" }, this.bar, this.percentEl),
      stages,
      this.statusEl,
      this.factsEl,
      this.notesEl,
      this.logBox,
      this.outcome,
      this.errorEl,
      el("footer", { class: "card-actions" }, this.abortButton, el("span", { class: "spacer" }), logsButton, envButton),
    );
    this.root = el("div", { class: "card-row" }, this.card);
    this.setState("requested");
  }

  started(data, event) {
    if (data.service) this.setService(data.service);
    if (data.source) this.sourceEl.textContent = data.source;
    const t = Date.parse(event.ts);
    if (!Number.isNaN(t)) this.startMs = t;
    this.tick();
  }

  setService(name) {
    this.service = name;
    this.serviceEl.textContent = name;
    this.card.querySelector(".service-mark").textContent = name.slice(0, 1).toUpperCase();
  }

  setState(state) {
    if (!state || (this.ended && RUNNING.has(state))) return;
    this.state = state;
    this.card.dataset.state = state;
    this.badge.textContent = STATE_LABELS[state] ?? state;
    this.badge.className = `badge state-${state}`;
    this.abortButton.hidden = !RUNNING.has(state);
    this.bar.classList.toggle("failed", state === "failed" || state === "aborted");
    this.bar.classList.toggle("done", state === "live");
    updateListItem(this.id, state);
    if (app.panel?.id === this.id) {
      $("panel-state").textContent = STATE_LABELS[state] ?? state;
      $("panel-state").className = `badge state-${state}`;
    }
  }

  setPercent(value) {
    const percent = Math.max(0, Math.min(100, Math.round(Number(value) || 0)));
    // Monotonic: an older or reordered event never moves the bar back.
    if (percent <= this.percent) return;
    this.percent = percent;
    this.fill.style.width = `${percent}%`;
    this.bar.setAttribute("aria-valuenow", String(percent));
    this.percentEl.textContent = `${percent}%`;
  }

  setStage(stage, status) {
    const li = this.stageEls.get(stage);
    if (!li || !STAGE_STATUSES.has(status)) return;
    li.dataset.status = status;
    li.title = `${li.textContent}: ${status}`;
  }

  progress(data, event) {
    if (Array.isArray(data.stages)) for (const s of data.stages) this.setStage(s?.stage, s?.status);
    this.setPercent(data.percent);
    this.setState(data.state);
    const t = Date.parse(event.ts);
    if (typeof data.elapsed_ms === "number" && !Number.isNaN(t)) this.startMs = t - data.elapsed_ms;
    if (data.state === "live" || data.state === "failed" || data.state === "aborted") this.endMs ??= t;
    this.tick();
    scrollToEnd();
  }

  update(data) {
    if (data.stage && STAGE_STATUSES.has(data.status)) {
      this.setStage(data.stage, data.status);
    } else if (data.text) {
      // A warning or a question: kept under the card.
      this.notesEl.hidden = false;
      this.notesEl.append(el("li", { class: `note ${data.status ?? ""}`, text: data.text }));
    }
    if (data.text) this.statusEl.textContent = data.text;
    scrollToEnd();
  }

  analysis(data) {
    const facts = [data.language, data.framework, data.package_manager, data.port ? `port ${data.port}` : null].filter(Boolean);
    this.factsEl.replaceChildren();
    for (const fact of facts) this.factsEl.append(el("span", { class: "fact", text: String(fact) }));
    if (data.start_command) this.factsEl.append(el("code", { class: "fact command", text: data.start_command }));
    this.factsEl.hidden = this.factsEl.childElementCount === 0;
  }

  buildLog(data) {
    if (!Array.isArray(data.lines)) return;
    const build = String(data.build_id ?? "build");
    if (!this.builds.has(build)) {
      if (this.builds.size > 0) this.log.append(el("div", { class: "log-divider", text: "Building again" }));
      this.builds.set(build, { index: this.builds.size, next: 0 });
    }
    const state = this.builds.get(build);
    const first = Number.isInteger(data.first_line) ? data.first_line : state.next;
    const stick = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
    const fragment = document.createDocumentFragment();
    data.lines.forEach((line, i) => {
      const n = first + i;
      // Lines are numbered within their build: one already shown is not shown twice.
      if (n < state.next) return;
      state.next = n + 1;
      fragment.append(el("div", { class: "log-line", "data-line": `${state.index}:${n}`, text: cleanLine(line) }));
      this.lines += 1;
    });
    this.log.append(fragment);
    while (this.log.childElementCount > MAX_LOG_LINES) {
      this.log.firstElementChild.remove();
      this.dropped += 1;
    }
    this.logBox.hidden = false;
    this.logCount.textContent = this.dropped ? `last ${MAX_LOG_LINES} of ${this.lines} lines` : `${this.lines} line${this.lines === 1 ? "" : "s"}`;
    if (stick || this.lines <= 60) this.log.scrollTop = this.log.scrollHeight;
    scrollToEnd();
  }

  complete(data, event) {
    this.ended = true;
    const state = data.state ?? "failed";
    const t = Date.parse(event.ts);
    if (!Number.isNaN(t)) this.endMs = t;
    this.setState(state);
    // The outcome says it now; the line of what is happening has nothing more to say.
    this.statusEl.textContent = "";
    this.outcome.replaceChildren();
    this.outcome.hidden = false;
    if (state === "live") {
      this.setPercent(100);
      const href = safeUrl(data.url);
      const link = href ? externalLink(href, data.url) : el("span", { text: data.url ?? "" });
      link.dataset.testid = "live-url";
      link.classList.add("live-url");
      this.outcome.className = "outcome live";
      const body = el("div", { class: "outcome-body" }, el("div", { class: "outcome-title", text: "Live" }), link);
      if (data.revision) body.append(el("div", { class: "revision mono", text: `revision ${data.revision}` }));
      this.outcome.append(el("span", { class: "outcome-icon", "aria-hidden": "true" }), body);
      if (!this.logToggled) this.logBox.open = false;
    } else {
      const failure = data.failure ?? {};
      this.outcome.className = "outcome failed";
      this.outcome.dataset.testid = "failure";
      const title = state === "aborted" ? "Aborted" : failure.stage ? `Failed at ${stageLabel(failure.stage)}` : "Failed";
      const body = el("div", { class: "outcome-body" }, el("div", { class: "outcome-title", text: title }));
      if (failure.message) {
        const message = el("div", { class: "failure-message markdown" });
        message.append(renderMarkdown(failure.message));
        body.append(message);
      }
      if (failure.cause) body.append(el("p", { class: "failure-cause", text: `Cause: ${failure.cause}` }));
      if (Array.isArray(failure.log_tail) && failure.log_tail.length) {
        const tail = el("div", { class: "log tail" });
        for (const line of failure.log_tail) tail.append(el("div", { class: "log-line", text: cleanLine(line) }));
        body.append(tail);
      }
      this.outcome.append(el("span", { class: "outcome-icon", "aria-hidden": "true" }), body);
    }
    this.tick();
    scrollToEnd();
  }

  async abort() {
    this.abortButton.disabled = true;
    this.abortButton.textContent = "Aborting…";
    this.errorEl.hidden = true;
    try {
      await api("POST", `/api/deployments/${encodeURIComponent(this.id)}/abort`);
    } catch (error) {
      this.errorEl.textContent = error.message;
      this.errorEl.hidden = false;
      this.abortButton.disabled = false;
      this.abortButton.textContent = "Abort";
    }
  }

  tick() {
    if (this.startMs === null || Number.isNaN(this.startMs)) return;
    const end = this.ended || !RUNNING.has(this.state) ? this.endMs ?? Date.now() : Date.now();
    this.elapsedEl.textContent = formatDuration(end - this.startMs);
  }
}

function stageLabel(stage) {
  return STAGES.find(([s]) => s === stage)?.[1]?.toLowerCase() ?? stage;
}

setInterval(() => {
  for (const c of app.cards.values()) if (!c.ended && RUNNING.has(c.state)) c.tick();
}, 1000);

// ---------------------------------------------------------------------------------------------
// Alerts

function renderAlert(data, event) {
  const id = String(data.alert_id ?? event.seq);
  let node = app.alerts.get(id);
  if (!node) {
    node = el("div", { class: "alert", "data-testid": "alert", "data-alert-id": id, role: "alert" });
    app.alerts.set(id, node);
    $("alerts").prepend(node);
  }
  const status = data.status ?? "open";
  node.dataset.status = status;
  node.className = `alert ${status}`;
  const kind = String(data.kind ?? "alert").replace(/_/g, " ");
  const detail = [kind, data.count > 1 ? `${data.count} times` : null, data.muted ? "muted" : null, status === "resolved" ? "resolved" : null].filter(Boolean);
  const title = el("div", { class: "alert-title" }, el("strong", { text: data.service ?? "Service" }), el("span", { text: ` · ${detail.join(" · ")}` }));
  const text = el("div", { class: "alert-text markdown" });
  text.append(renderMarkdown(data.summary ?? data.text ?? ""));
  const body = el("div", { class: "alert-body" }, title, text);
  if (Array.isArray(data.key_lines) && data.key_lines.length && status !== "resolved") {
    const lines = el("div", { class: "log alert-lines" });
    for (const line of data.key_lines.slice(-12)) lines.append(el("div", { class: "log-line", text: cleanLine(line) }));
    body.append(lines);
  }
  const actions = el("div", { class: "alert-actions" });
  const message = el("span", { class: "alert-message" });
  if (status !== "resolved" && data.service) {
    const button = el("button", { class: "button primary small", type: "button", "data-testid": "rollback", text: data.rollback_to ? `Roll back to ${data.rollback_to}` : "Roll back" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = "Rolling back…";
      const request = {};
      if (data.rollback_to) request.to = data.rollback_to;
      if (app.sessionId) request.session_id = app.sessionId;
      try {
        const answer = await api("POST", `/api/services/${encodeURIComponent(data.service)}/rollback`, request);
        button.textContent = "Rollback requested";
        message.textContent = `Traffic moves to ${answer?.to ?? data.rollback_to ?? "the previous revision"} once it answers.`;
      } catch (error) {
        button.disabled = false;
        button.textContent = "Roll back";
        message.textContent = error.message;
      }
    });
    actions.append(button);
  }
  actions.append(message);
  body.append(actions);
  const dismiss = el("button", { class: "icon-button dismiss", type: "button", "aria-label": "Dismiss", text: "×" });
  dismiss.addEventListener("click", () => {
    node.remove();
    app.alerts.delete(id);
  });
  node.replaceChildren(el("span", { class: "alert-icon", "aria-hidden": "true" }), body, dismiss);
}

// ---------------------------------------------------------------------------------------------
// Notices (connection refusals)

function showNotice(text, actionLabel, action) {
  const notice = $("notice");
  const children = [el("span", { text })];
  if (actionLabel) {
    const button = el("button", { class: "button small", type: "button", text: actionLabel });
    button.addEventListener("click", () => {
      hideNotice();
      action();
    });
    children.push(button);
  }
  notice.replaceChildren(...children);
  notice.hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Composer

const input = $("chat-input");

function autosize() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
}

input.addEventListener("input", autosize);
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  if (new TextEncoder().encode(text).length > MAX_MESSAGE_BYTES) {
    showNotice(`A message has at most ${MAX_MESSAGE_BYTES} bytes.`);
    return;
  }
  const message = { type: "message", text, client_message_id: newId() };
  app.outbox.push(message);
  const pending = el(
    "article",
    { class: "message user pending", "data-testid": "message-pending", "data-role": "user", "data-client-id": message.client_message_id },
    el("div", { class: "message-body" }, el("p", { text })),
  );
  append(pending);
  scrollToEnd(true);
  input.value = "";
  autosize();
  flushOutbox();
});

function flushOutbox() {
  if (!app.ws || !app.ready || app.ws.readyState !== WebSocket.OPEN) return;
  while (app.outbox.length) {
    const message = app.outbox.shift();
    app.ws.send(JSON.stringify(message));
    app.unconfirmed.push(message);
  }
}

$("suggestions").addEventListener("click", (event) => {
  const fill = event.target.closest("[data-fill]")?.dataset.fill;
  if (!fill) return;
  input.value = fill;
  autosize();
  input.focus();
});

$("new-chat").addEventListener("click", newChat);

// ---------------------------------------------------------------------------------------------
// Deployments list (sidebar)

let refreshTimer = null;
function refreshDeploymentsSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshDeployments, 300);
}

async function refreshDeployments() {
  if (!app.token) return;
  let list;
  // What each service serves now: a live deployment whose revision no longer serves was replaced.
  const services = api("GET", "/api/services").catch(() => []);
  try {
    list = await api("GET", "/api/deployments?limit=50");
    app.serving = new Map((Array.isArray(await services) ? await services : []).map((svc) => [svc.name, svc.traffic?.serving ?? null]));
  } catch (error) {
    $("deployments-empty").textContent = error.message;
    $("deployments-empty").hidden = false;
    return;
  }
  const items = Array.isArray(list) ? list : Array.isArray(list?.deployments) ? list.deployments : [];
  const ul = $("deployments");
  ul.replaceChildren();
  app.listed.clear();
  for (const d of items) {
    app.listed.set(d.id, d);
    const live = app.cards.get(d.id);
    const state = live?.ended || (live && RUNNING.has(d.state)) ? live.state : d.state;
    const replaced = state === "live" && isReplaced(d);
    const button = el(
      "button",
      { class: `deployment-item${replaced ? " replaced" : ""}`, type: "button", "data-testid": "deployment-item", "data-deployment-id": d.id, "data-state": state },
      el("span", { class: "state-dot", "aria-hidden": "true" }),
      el("span", { class: "item-main" }, el("span", { class: "item-name", text: d.service ?? shortId(d.id) }), el("span", { class: "item-sub", text: sourceText(d.source) })),
      el("span", { class: "item-side" }, el("span", { class: "item-state", text: replaced ? "Replaced" : STATE_LABELS[state] ?? state ?? "" }), el("span", { class: "item-time", text: timeAgo(d.created_at) })),
    );
    button.addEventListener("click", () => {
      closeSidebar();
      openPanel(d.id, "logs");
    });
    ul.append(el("li", {}, button));
  }
  $("deployments-empty").textContent = "No deployments yet.";
  $("deployments-empty").hidden = items.length > 0;
}

/** A live deployment whose service now serves another revision. */
function isReplaced(d) {
  const serving = app.serving?.get(d.service);
  return Boolean(serving && d.revision && serving !== d.revision);
}

function sourceText(source) {
  if (!source) return "";
  if (typeof source === "string") return source;
  const location = source.location ?? source;
  const full = String(location.url ?? location.path ?? location.Git?.url ?? location.Local?.path ?? "");
  // The end of it says the most: owner/repo, or the last folders of a path.
  const parts = full.replace(/^https?:\/\//, "").replace(/\.git$/, "").split("/").filter(Boolean);
  const text = parts.length > 3 ? `…/${parts.slice(-2).join("/")}` : parts.join("/");
  return source.git_ref ? `${text} @ ${source.git_ref}` : text;
}

function updateListItem(id, state) {
  const item = document.querySelector(`.deployment-item[data-deployment-id="${CSS.escape(id)}"]`);
  if (!item) return;
  item.dataset.state = state;
  item.querySelector(".item-state").textContent = STATE_LABELS[state] ?? state;
}

$("refresh-deployments").addEventListener("click", refreshDeployments);

function openSidebar() {
  $("shell").classList.add("sidebar-open");
  $("scrim").hidden = false;
  $("menu-button").setAttribute("aria-expanded", "true");
}

function closeSidebar() {
  $("shell").classList.remove("sidebar-open");
  $("scrim").hidden = true;
  $("menu-button").setAttribute("aria-expanded", "false");
}

$("menu-button").addEventListener("click", () => ($("shell").classList.contains("sidebar-open") ? closeSidebar() : openSidebar()));
$("scrim").addEventListener("click", closeSidebar);

// ---------------------------------------------------------------------------------------------
// Deployment panel: runtime logs and the env/secret editor

const panel = $("panel");
let logsTimer = null;

function openPanel(id, tab) {
  app.panel = { id, env: [], added: [], removed: new Set() };
  $("panel-message").textContent = "";
  const known = app.listed.get(id);
  const fromCard = app.cards.get(id);
  $("panel-title").textContent = known?.service ?? fromCard?.service ?? `Deployment ${shortId(id)}`;
  setPanelMeta(known ?? { id, state: fromCard?.state });
  if (!panel.open) {
    panel.showModal();
    // The dialog itself takes focus, not its first button.
    panel.focus();
  }
  selectTab(tab);
  api("GET", `/api/deployments/${encodeURIComponent(id)}`)
    .then((d) => {
      if (app.panel?.id !== id || !d) return;
      $("panel-title").textContent = d.service ?? $("panel-title").textContent;
      setPanelMeta(d);
    })
    .catch(() => {});
}

function setPanelMeta(d) {
  const state = d.state ?? "";
  // Rolling back moves the service off what serves now: offered where that is this deployment.
  $("panel-rollback").hidden = state !== "live" || isReplaced(d);
  const badge = $("panel-state");
  badge.textContent = STATE_LABELS[state] ?? state;
  badge.className = `badge state-${state}`;
  const meta = $("panel-meta");
  meta.replaceChildren();
  const href = safeUrl(d.url ?? "");
  if (href) meta.append(externalLink(href, d.url));
  if (d.revision) meta.append(el("span", { class: "mono", text: d.revision }));
  meta.append(el("span", { class: "muted", text: `deployment ${shortId(d.id)}` }));
  if (d.created_at) meta.append(el("span", { class: "muted", text: timeAgo(d.created_at) }));
}

function selectTab(tab) {
  for (const button of panel.querySelectorAll(".tab")) button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  $("logs-tab").hidden = tab !== "logs";
  $("env-tab").hidden = tab !== "env";
  clearInterval(logsTimer);
  if (tab === "logs") {
    loadLogs();
    logsTimer = setInterval(() => {
      if (panel.open && !document.hidden) loadLogs();
    }, 5000);
  } else {
    loadEnv();
  }
}

for (const button of panel.querySelectorAll(".tab")) button.addEventListener("click", () => selectTab(button.dataset.tab));
$("panel-close").addEventListener("click", () => panel.close());
panel.addEventListener("close", () => {
  clearInterval(logsTimer);
  app.panel = null;
});
panel.addEventListener("click", (event) => {
  // A click on the backdrop closes the dialog.
  if (event.target === panel) panel.close();
});

function logLines(body) {
  const raw = Array.isArray(body) ? body : body?.lines ?? body?.entries ?? body?.logs ?? [];
  return raw.map((line) => (typeof line === "string" ? { text: line } : { ts: line?.ts ?? line?.time ?? line?.timestamp, text: line?.text ?? line?.message ?? line?.line ?? JSON.stringify(line), stream: line?.stream ?? line?.severity }));
}

async function loadLogs() {
  const id = app.panel?.id;
  if (!id) return;
  $("logs-status").textContent = "Loading…";
  let body;
  let problem = null;
  try {
    body = await api("GET", `/api/deployments/${encodeURIComponent(id)}/logs`);
  } catch (error) {
    // A deployment that never ran has no runtime logs, but the answer still has its build log.
    problem = error.message;
    body = error.body ?? {};
  }
  if (app.panel?.id !== id) return;
  const lines = problem ? [] : logLines(body);
  const view = $("logs-body");
  const stick = view.scrollHeight - view.scrollTop - view.clientHeight < 40;
  const fragment = document.createDocumentFragment();
  for (const line of lines.slice(-MAX_LOG_LINES)) {
    const stream = String(line.stream ?? "").toLowerCase();
    const row = el("div", { class: `log-line${stream === "stderr" || stream === "error" ? " err" : ""}` });
    if (line.ts) row.append(el("span", { class: "log-ts", text: clockTime(line.ts) || String(line.ts) }));
    row.append(document.createTextNode(cleanLine(line.text)));
    fragment.append(row);
  }
  if (problem) fragment.append(el("div", { class: "log-empty", text: problem }));
  else if (!lines.length) fragment.append(el("div", { class: "log-empty", text: "No log lines yet." }));
  view.replaceChildren(fragment);
  $("logs-status").textContent = problem ? "" : `${lines.length} line${lines.length === 1 ? "" : "s"} · updated ${clockTime(new Date().toISOString())}`;
  if (stick) view.scrollTop = view.scrollHeight;
  const build = Array.isArray(body?.build_log) ? body.build_log : [];
  const box = $("logs-build");
  box.hidden = build.length === 0;
  $("logs-build-count").textContent = `last ${build.length} line${build.length === 1 ? "" : "s"}`;
  $("logs-build-body").replaceChildren(...build.map((line) => el("div", { class: "log-line", text: cleanLine(line) })));
}

$("logs-refresh").addEventListener("click", loadLogs);

let rollbackArmed = null;
$("panel-rollback").addEventListener("click", async () => {
  const button = $("panel-rollback");
  const id = app.panel?.id;
  if (!id) return;
  // Two clicks: a rollback moves traffic, so the first one only asks.
  if (!rollbackArmed) {
    button.textContent = "Click again to roll back";
    rollbackArmed = setTimeout(() => {
      rollbackArmed = null;
      button.textContent = "Roll back";
    }, 4000);
    return;
  }
  clearTimeout(rollbackArmed);
  rollbackArmed = null;
  button.disabled = true;
  button.textContent = "Rolling back…";
  try {
    const body = app.sessionId ? { session_id: app.sessionId } : {};
    const answer = await api("POST", `/api/deployments/${encodeURIComponent(id)}/rollback`, body);
    $("panel-message").textContent = answer?.to ? `Rolling back to ${answer.to}.` : "Rollback requested.";
    refreshDeploymentsSoon();
  } catch (error) {
    $("panel-message").textContent = error.message;
  } finally {
    button.disabled = false;
    button.textContent = "Roll back";
  }
});

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

async function loadEnv() {
  const id = app.panel?.id;
  if (!id) return;
  if (!app.panel.keepStatus) $("env-status").textContent = "Loading…";
  $("env-rows").replaceChildren();
  let body;
  try {
    body = await api("GET", `/api/deployments/${encodeURIComponent(id)}/env`);
  } catch (error) {
    if (app.panel?.id === id) $("env-status").textContent = error.message;
    return;
  }
  if (app.panel?.id !== id) return;
  const vars = Array.isArray(body?.vars) ? body.vars : Array.isArray(body) ? body : [];
  app.panel.env = vars.map((v) => ({
    name: String(v.name ?? ""),
    value: v.secret ? null : v.value ?? "",
    secret: Boolean(v.secret),
    isNew: false,
    note: outsideNote(v),
    outside: v.changed_outside ? String(v.outside ?? "") : "",
  }));
  app.panel.added = [];
  app.panel.removed = new Set();
  renderEnv();
  if (!app.panel.keepStatus) $("env-status").textContent = vars.length ? syncStatus(body?.sync, vars) : "No variables set.";
  app.panel.keepStatus = false;
}

// What changed outside DevGem (the Cloud Run console, `gcloud secrets versions add`), in words.
function outsideNote(v) {
  const version = (n) => `v${Number(n)}`;
  switch (v.changed_outside ? v.outside : "") {
    case "new_secret_version":
      return `A newer version (${version(v.latest_version)}) was added outside DevGem; the service runs ${version(v.version)} until it is deployed again, and saving deploys ${version(v.latest_version)}.`;
    case "value": {
      const d = v.deployed ?? {};
      const was = d.secret ? `a secret (${version(d.version)})` : JSON.stringify(String(d.value ?? ""));
      return `Changed outside DevGem (DevGem deployed ${was}); saving keeps what the service runs now.`;
    }
    case "added":
      return "Added outside DevGem; saving keeps it.";
    case "removed":
      return "Removed outside DevGem; saving leaves it out.";
    default:
      return v.latest_version ? `A later DevGem deployment stored a newer version (${version(v.latest_version)}).` : "";
  }
}

// The panel's status line: what could not be checked, or that some variables changed outside.
function syncStatus(sync, vars) {
  if (sync && (sync.live_env === "unavailable" || sync.secrets === "unavailable")) {
    return (Array.isArray(sync.notes) ? sync.notes : []).join("; ") || "Changes made outside DevGem could not be checked.";
  }
  return vars.some((v) => v.changed_outside) ? "Some variables were changed outside DevGem (hover them for what); saving keeps those changes." : "";
}

function renderEnv() {
  const rows = $("env-rows");
  rows.replaceChildren();
  for (const v of [...app.panel.env, ...app.panel.added]) {
    const removed = app.panel.removed.has(v.name);
    const row = el("div", { class: `env-row${removed ? " removed" : ""}${v.isNew ? " added" : ""}`, "data-testid": "env-row", "data-name": v.name, "data-secret": String(v.secret), "data-outside": v.outside || "" });
    if (v.note) row.title = v.note;
    const name = el("span", { class: "env-name mono", text: v.name });
    let field;
    if (v.secret) {
      // Secret values are write-only: a new one can be typed, the old one is never shown.
      field = el("input", { class: "input", type: "password", autocomplete: "new-password", placeholder: v.isNew ? "value" : "new value (optional)", "aria-label": `New value of ${v.name}`, "data-testid": "env-secret-input" });
      if (v.isNew) field.value = v.pending ?? "";
      field.addEventListener("input", () => (v.pending = field.value));
    } else {
      field = el("input", { class: "input", type: "text", "aria-label": `Value of ${v.name}`, spellcheck: "false" });
      field.value = v.pending ?? v.value ?? "";
      field.addEventListener("input", () => (v.pending = field.value));
    }
    field.disabled = removed;
    const outsideMark = v.outside ? " ↻" : "";
    const tag = v.secret
      ? el("span", { class: "secret-tag", title: v.note || "Secret: the value is stored and never shown", text: v.isNew ? "secret" : `••• set${outsideMark}` })
      : el("span", { class: "plain-tag", title: v.note || "", text: v.isNew ? "new" : v.outside ? "outside" : "" });
    const remove = el("button", { class: "button ghost small", type: "button", text: removed ? "Undo" : "Remove", "aria-label": `${removed ? "Keep" : "Remove"} ${v.name}` });
    // Already gone from the service: there is nothing to unset.
    if (v.outside === "removed") remove.disabled = true;
    remove.addEventListener("click", () => {
      if (v.isNew) app.panel.added = app.panel.added.filter((a) => a !== v);
      else if (removed) app.panel.removed.delete(v.name);
      else app.panel.removed.add(v.name);
      renderEnv();
    });
    row.append(name, field, tag, remove);
    rows.append(row);
  }
}

$("env-add").addEventListener("click", () => {
  const name = $("env-new-name").value.trim();
  const value = $("env-new-value").value;
  const secret = $("env-new-secret").checked;
  if (!ENV_NAME.test(name)) {
    $("env-status").textContent = "A name has letters, digits and underscores, and does not start with a digit.";
    return;
  }
  // A name that is set already is replaced by the new value (and kind).
  app.panel.env = app.panel.env.filter((v) => v.name !== name);
  app.panel.added = app.panel.added.filter((v) => v.name !== name);
  app.panel.removed.delete(name);
  app.panel.added.push({ name, value: secret ? null : value, pending: value, secret, isNew: true });
  $("env-new-name").value = "";
  $("env-new-value").value = "";
  $("env-new-secret").checked = false;
  $("env-status").textContent = "";
  renderEnv();
});

$("env-new-secret").addEventListener("change", () => {
  $("env-new-value").type = $("env-new-secret").checked ? "password" : "text";
});

$("env-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const state = app.panel;
  if (!state) return;
  const set = {};
  const secrets = {};
  for (const v of [...state.env, ...state.added]) {
    if (state.removed.has(v.name)) continue;
    if (v.secret) {
      if (v.pending) secrets[v.name] = v.pending;
    } else if (v.isNew || (v.pending !== undefined && v.pending !== v.value)) {
      set[v.name] = v.pending ?? v.value ?? "";
    }
  }
  const unset = [...state.removed];
  if (!Object.keys(set).length && !Object.keys(secrets).length && !unset.length) {
    $("env-status").textContent = "Nothing changed.";
    return;
  }
  $("env-save").disabled = true;
  $("env-status").textContent = "Saving…";
  try {
    const change = { set, secrets, unset };
    if (app.sessionId) change.session_id = app.sessionId;
    const answer = await api("POST", `/api/deployments/${encodeURIComponent(state.id)}/env`, change);
    const next = answer?.deployment_id ?? answer?.id ?? answer?.deployment?.id;
    const saved = next ? `Saved. Deploying again as ${shortId(next)}.` : "Saved. Deploying again.";
    refreshDeploymentsSoon();
    // Secret values typed here are forgotten at once.
    for (const v of [...state.env, ...state.added]) delete v.pending;
    if (app.panel === state) {
      // The new deployment carries the values: the panel follows it.
      if (next) {
        openPanel(next, "env");
        app.panel.keepStatus = true;
      } else {
        app.panel.keepStatus = true;
        await loadEnv();
      }
      $("env-status").textContent = saved;
    }
  } catch (error) {
    $("env-status").textContent = error.message;
  } finally {
    $("env-save").disabled = false;
  }
});

// ---------------------------------------------------------------------------------------------
// Start

async function begin() {
  try {
    app.me = app.me ?? (await api("GET", "/api/me"));
  } catch (error) {
    if (error.status === 401) return;
    app.me = null;
  }
  $("whoami").textContent = app.me?.user_id ?? "";
  $("whoami").hidden = !app.me;
  connect();
  refreshDeployments();
}

function main() {
  app.token = readToken();
  if (!app.token) {
    setConnection("closed", "Signed out");
    showLogin();
    return;
  }
  begin();
}

main();
