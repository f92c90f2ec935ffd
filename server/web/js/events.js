// The event protocol client (DESIGN.md "Event protocol").
//
// Messages are JSON {type, payload}; the server may send an array of them at once.
// The preferred transport is the `events` DataChannel of the page's own WHEP/WHIP peer
// connection; when none opens within a few seconds (no media yet, WebRTC blocked), the
// client uses the WebSocket `GET /api/v1/livestreams/{id}/events` and reconnects it with
// backoff. When the DataChannel delivers its welcome, the WebSocket is closed so a viewer
// counts once.

const CHANNEL_WAIT_MS = 2500;
const MAX_BACKOFF_MS = 8000;
const REQUEST_TIMEOUT_MS = 15000;

export class EventClient {
  /** token(): Promise of the access token or null; onStatus(status, transport). */
  constructor({ livestreamId, token = async () => null, onStatus = () => {} }) {
    this.livestreamId = livestreamId;
    this.token = token;
    this.onStatus = onStatus;
    this.handlers = new Map();
    this.pending = new Map();
    this.channel = null;
    this.ws = null;
    this.transport = null;
    this.closed = false;
    this.attempt = 0;
    this.wsTimer = null;
    this.fallbackTimer = null;
    this.seq = 0;
    this._online = () => { if (!this.transport && !this.closed) this._openSocket(); };
    window.addEventListener("online", this._online);
  }

  /** Register a handler for an event type ("*" gets every event). */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  /** Start: wait a little for a DataChannel, then use the WebSocket. */
  start() {
    this._status(this.transport ? "open" : "connecting");
    this._armFallback();
  }

  /** Use this DataChannel (from the media session) as soon as it opens. */
  attachChannel(channel) {
    if (this.closed) return;
    this._armFallback();
    // An open channel is not yet proof that the room is listening on it (the SCTP
    // association opens on its own): switch to it on its first message, the welcome.
    channel.addEventListener("message", (e) => {
      if (this.closed) return;
      if (this.channel !== channel) {
        this.channel = channel;
        this.transport = "datachannel";
        clearTimeout(this.fallbackTimer);
        this._closeSocket();
        this._status("open");
      }
      this._receive(e.data);
    });
    const lost = () => {
      if (this.channel !== channel) return;
      this.channel = null;
      this.transport = null;
      if (this.closed) return;
      this._status("reconnecting");
      this._armFallback();
    };
    channel.addEventListener("close", lost);
    channel.addEventListener("error", lost);
  }

  /** Send one event; returns its ref. Throws when no transport is open. */
  send(type, payload = {}) {
    const ref = payload.ref || `r${Date.now().toString(36)}${(this.seq++).toString(36)}`;
    const body = JSON.stringify({ type, payload: { ...payload, ref } });
    if (this.transport === "datachannel" && this.channel?.readyState === "open") this.channel.send(body);
    else if (this.transport === "websocket" && this.ws?.readyState === WebSocket.OPEN) this.ws.send(body);
    else throw new Error("Not connected to the live room. Reconnecting…");
    return ref;
  }

  /** Send an event and resolve with the server's `ack` (reject on its `error`). */
  request(type, payload = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      let ref;
      try { ref = this.send(type, payload); } catch (err) { reject(err); return; }
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new Error("The live room did not answer in time. Please try again."));
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
    });
  }

  /** Open again after close() (the page came back after being hidden). */
  reopen() {
    if (!this.closed) return;
    this.closed = false;
    this.attempt = 0;
    window.addEventListener("online", this._online);
    this.start();
  }

  close() {
    this.closed = true;
    clearTimeout(this.wsTimer);
    clearTimeout(this.fallbackTimer);
    window.removeEventListener("online", this._online);
    this._closeSocket();
    this.channel = null;
    this.transport = null;
  }

  _status(status) {
    document.body.dataset.events = status; // for tests and styling: connecting|open|reconnecting
    document.body.dataset.eventsTransport = this.transport || "";
    this.onStatus(status, this.transport);
  }

  _armFallback() {
    if (this.transport || this.closed) return;
    clearTimeout(this.fallbackTimer);
    this.fallbackTimer = setTimeout(() => {
      if (!this.transport && !this.ws && !this.closed) this._openSocket();
    }, CHANNEL_WAIT_MS);
  }

  _closeSocket() {
    clearTimeout(this.wsTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) { ws.onclose = null; ws.close(); }
  }

  _openSocket() {
    if (this.closed || this.ws) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/livestreams/${this.livestreamId}/events`);
    this.ws = ws;
    ws.onopen = async () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.transport = "websocket";
      // Browsers cannot set headers on a WebSocket: a logged-in viewer says who they are.
      const token = await this.token().catch(() => null);
      if (token && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "auth", payload: { accessToken: token } }));
      this._status("open");
    };
    ws.onmessage = (e) => this._receive(e.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.transport === "websocket") this.transport = null;
      if (this.closed || this.transport) return;
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
      this.attempt += 1;
      this._status("reconnecting");
      this.wsTimer = setTimeout(() => this._openSocket(), delay);
    };
  }

  _receive(data) {
    let parsed;
    try { parsed = JSON.parse(data); } catch { return; }
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if (!message || typeof message.type !== "string") continue;
      const payload = message.payload || {};
      const waiter = payload.ref ? this.pending.get(payload.ref) : null;
      if (waiter && (message.type === "ack" || message.type === "error")) {
        clearTimeout(waiter.timer);
        this.pending.delete(payload.ref);
        if (message.type === "ack") waiter.resolve(payload);
        else waiter.reject(Object.assign(new Error(payload.message || "Refused."), { code: payload.code }));
        continue;
      }
      for (const handler of [...(this.handlers.get(message.type) || []), ...(this.handlers.get("*") || [])]) {
        try { handler(payload, message.type); } catch (err) { console.warn("event handler failed", message.type, err); }
      }
    }
  }
}
