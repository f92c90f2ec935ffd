// WHIP (publish) and WHEP (watch) client with reconnect and backoff.
//
// One offer per attempt, no trickle: the offer is POSTed after ICE gathering completes.
// The `events` DataChannel is created before createOffer so that it is part of the
// offer; the caller gets it through onChannel and speaks the event protocol on it.
// A lost connection (ICE failed, or disconnected for a few seconds, or the network
// coming back) starts a new session; the old one is DELETEd.

const ICE_GATHER_TIMEOUT_MS = 3000;
const DISCONNECTED_GRACE_MS = 3000;
const MAX_BACKOFF_MS = 8000;

export class MediaError extends Error {
  constructor(status, message, retryable, code = null) {
    super(message);
    this.status = status;
    this.retryable = retryable;
    this.code = code;
  }
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Loopback-only ICE completes in milliseconds; the timeout covers stuck gatherers.
    const timer = setTimeout(() => { pc.removeEventListener("icegatheringstatechange", done); resolve(); }, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

// TURN relays with credentials minted by the server (empty unless TURN_URLS is set).
async function iceServers() {
  const resp = await fetch("/api/v1/ice-servers").catch(() => null);
  return resp && resp.ok ? (await resp.json()).iceServers : [];
}

function preferCodecs(transceiver, kind) {
  // The SFU forwards VP8 and H.264 (VP9/AV1-only offers are refused): offer those first.
  if (!transceiver.setCodecPreferences || !window.RTCRtpReceiver?.getCapabilities) return;
  const caps = RTCRtpReceiver.getCapabilities(kind);
  if (!caps) return;
  const rank = (c) => {
    const m = c.mimeType.toLowerCase();
    if (kind === "video") return m === "video/vp8" ? 0 : m === "video/h264" ? 1 : /rtx|red|ulpfec/.test(m) ? 2 : 3;
    return m === "audio/opus" ? 0 : 1;
  };
  transceiver.setCodecPreferences([...caps.codecs].sort((a, b) => rank(a) - rank(b)));
}

export class MediaSession {
  /**
   * mode: "watch" (WHEP) or "publish" (WHIP); url: the endpoint; stream: the MediaStream
   * to publish; token(): a Promise of the bearer token or null; onTrack(MediaStream),
   * onState(state, detail) with state in connecting|connected|reconnecting|waiting|failed|stopped,
   * onChannel(RTCDataChannel).
   */
  constructor({ mode, url, stream = null, token = async () => null, onTrack = () => {}, onState = () => {}, onChannel = () => {} }) {
    Object.assign(this, { mode, url, stream, token, onTrack, onState, onChannel });
    this.pc = null;
    this.location = null;
    this.stopped = true;
    this.attempt = 0;
    this.timer = null;
    this.graceTimer = null;
    this.generation = 0;
    this._online = () => { if (!this.stopped && this.state !== "connected") this.retryNow(); };
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    window.addEventListener("online", this._online);
    this._connect();
  }

  /** Try again now (e.g. the stream just went live) instead of waiting for the backoff. */
  retryNow() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    this._connect();
  }

  /** Stop for good; `leave: false` when the server already ended the session (stream ended). */
  async stop({ keepalive = false, leave = true } = {}) {
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.timer);
    clearTimeout(this.graceTimer);
    window.removeEventListener("online", this._online);
    await this._teardown(keepalive, leave);
    this._setState("stopped");
  }

  /** Swap the published camera or microphone track without renegotiating. */
  async replaceTrack(kind, track) {
    const sender = this.pc?.getSenders().find((s) => s.track?.kind === kind);
    if (sender) await sender.replaceTrack(track);
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.onState(state, detail);
  }

  async _teardown(keepalive, leave = true) {
    const pc = this.pc;
    const location = leave ? this.location : null;
    this.pc = null;
    this.location = null;
    // DELETE before closing: a closed peer connection may already end the session on
    // the server, and the DELETE would then find nothing to leave.
    // The session URL is the capability (no token): nothing to refresh before leaving.
    if (location) await fetch(location, { method: "DELETE", keepalive }).catch(() => {});
    if (pc) pc.close();
  }

  /**
   * Leave at once because the page is going away (pagehide, hidden): the DELETE is
   * sent synchronously with keepalive, so it outlives the page, then the peer
   * connection closes. Nothing is awaited: an unloading page gets no second turn.
   */
  leaveNow() {
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.timer);
    clearTimeout(this.graceTimer);
    window.removeEventListener("online", this._online);
    const { pc, location } = this;
    this.pc = null;
    this.location = null;
    if (location) fetch(location, { method: "DELETE", keepalive: true }).catch(() => {});
    if (pc) pc.close();
    this._setState("stopped");
  }

  async _connect() {
    const generation = ++this.generation;
    clearTimeout(this.graceTimer);
    await this._teardown(false);
    if (this.stopped || generation !== this.generation) return;
    // Once the media has played, every new attempt is a reconnect, whatever its number.
    this._setState(this.attempt === 0 && !this.everConnected ? "connecting" : "reconnecting", { attempt: this.attempt });
    try {
      await this._negotiate(generation);
    } catch (err) {
      if (this.stopped || generation !== this.generation) return;
      await this._teardown(false);
      const retryable = err instanceof MediaError ? err.retryable : true;
      if (!retryable) {
        this._setState("failed", { error: err });
        return;
      }
      this._scheduleRetry(err);
    }
  }

  _scheduleRetry(err) {
    if (this.stopped) return;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
    this.attempt += 1;
    const waiting = err instanceof MediaError && (err.status === 404 || err.status === 409);
    this._setState(waiting ? "waiting" : "reconnecting", { error: err, delayMs: Math.round(delay), attempt: this.attempt });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), delay);
  }

  async _negotiate(generation) {
    const pc = new RTCPeerConnection({ iceServers: await iceServers() });
    this.pc = pc;
    // Created before the offer so that the offer carries an SCTP section.
    const channel = pc.createDataChannel("events", { ordered: true });
    this.onChannel(channel);
    if (this.mode === "publish") {
      for (const track of this.stream.getTracks()) {
        const t = pc.addTransceiver(track, { direction: "sendonly", streams: [this.stream] });
        preferCodecs(t, track.kind);
      }
    } else {
      const remote = new MediaStream();
      preferCodecs(pc.addTransceiver("video", { direction: "recvonly" }), "video");
      preferCodecs(pc.addTransceiver("audio", { direction: "recvonly" }), "audio");
      pc.addEventListener("track", (e) => {
        remote.addTrack(e.track);
        this.onTrack(remote);
      });
    }
    pc.addEventListener("connectionstatechange", () => this._onConnectionState(pc, generation));
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (generation !== this.generation) return;

    const headers = { "Content-Type": "application/sdp" };
    const token = await this.token().catch(() => null);
    if (token) headers.Authorization = `Bearer ${token}`;
    let resp;
    try {
      resp = await fetch(this.url, { method: "POST", headers, body: pc.localDescription.sdp });
    } catch {
      throw new MediaError(0, "Cannot reach the server.", true);
    }
    if (resp.status !== 201) {
      let message = `The media server answered ${resp.status}.`;
      let code = null;
      try {
        const error = (await resp.json()).error || {};
        message = error.message || message;
        code = error.code || null;
      } catch { /* not JSON */ }
      // 404/409: the stream is not live (yet); 429/5xx: busy. Both are worth retrying.
      let retryable = resp.status === 404 || resp.status === 409 || resp.status === 429 || resp.status >= 500;
      // Another publisher is live (OBS, ffmpeg, the demo's test card): waiting would never
      // end. After we were connected it is our own old session, gone in a few seconds.
      if (this.mode === "publish" && code === "publisher_conflict" && !this.everConnected) retryable = false;
      throw new MediaError(resp.status, message, retryable, code);
    }
    const location = resp.headers.get("Location");
    this.location = location ? new URL(location, new URL(this.url, window.location.href)).href : null;
    const answer = await resp.text();
    if (generation !== this.generation) return;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  _onConnectionState(pc, generation) {
    if (pc !== this.pc || generation !== this.generation || this.stopped) return;
    const state = pc.connectionState;
    if (state === "connected") {
      clearTimeout(this.graceTimer);
      this.attempt = 0;
      this.everConnected = true;
      this._setState("connected");
    } else if (state === "failed") {
      this._scheduleRetry(new MediaError(0, "The media connection failed.", true));
    } else if (state === "disconnected") {
      this._setState("reconnecting", { attempt: 0 });
      // ICE often recovers by itself after a short network blip; give it a moment.
      clearTimeout(this.graceTimer);
      this.graceTimer = setTimeout(() => {
        if (pc === this.pc && pc.connectionState !== "connected") this._scheduleRetry(new MediaError(0, "The media connection was lost.", true));
      }, DISCONNECTED_GRACE_MS);
    }
  }
}
