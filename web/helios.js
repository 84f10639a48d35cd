// Helios Serve JS SDK: an ES module with no build step (docs/sdk.md).
//
//   import { connect } from "/static/helios.js";
//   const session = connect("https://host/v1/sessions/<id>", { apiKey });   // or { viewerToken }
//   session.on("message", (msg) => ...);          // the protocol's {type, data, seq} objects, as the Python client
//   const ack = await session.sendCommand("set_prompt", { prompt: "a red fox" });
//   const player = session.attach(videoElement, { format: "mp4" });         // "mp4" (MSE) | "hls" | "mjpeg"
//
// Method and message names are those of the Helios session protocol (DESIGN section 6).
// Messages come from the SSE log with resume: a dropped connection reconnects with
// `after=<last seq>` (like helios/client/wire.py), so no message is lost or repeated.

const MAX_BACKOFF_MS = 10_000;
const LIVE_LAG_S = 2.5;        // further than this behind the buffered end: jump to the live edge
const KEEP_BUFFER_S = 20;      // seconds of played video kept in the SourceBuffer
const RATE_WINDOW_MS = 5_000;  // bitrate averaged over this window
const HLS_SCRIPT = new URL("vendor/hls.min.js", import.meta.url).href;

/** A session handle for `url` (".../v1/sessions/<id>", absolute or root-relative). */
export function connect(url, { apiKey = null, viewerToken = null, after = 0, messages = true } = {}) {
  return new HeliosSession(url, { apiKey, viewerToken, after, messages });
}

/** An error of the HTTP API: `status`, `detail`, `field` and, for a refused command, `ack`. */
export class HeliosError extends Error {
  constructor(status, body) {
    const detail = body && body.detail !== undefined ? body.detail : `HTTP ${status}`;
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
    this.field = body && body.field;
    this.ack = body && body.ack;
  }
}

class Emitter {
  constructor() { this._handlers = new Map(); }
  /** Subscribe to `type`; returns the function that unsubscribes. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type).delete(fn);
  }
  _emit(type, value) {
    for (const fn of this._handlers.get(type) || []) {
      try { fn(value); } catch (err) { console.error(`helios: ${type} handler failed`, err); }
    }
  }
}

export class HeliosSession extends Emitter {
  constructor(url, { apiKey, viewerToken, after, messages }) {
    super();
    const u = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    const m = u.pathname.match(/^(.*\/v1\/sessions\/)([0-9a-f]{32})\/?$/);
    if (!m) throw new Error(`url: expected .../v1/sessions/<session id>, got ${url}`);
    this.id = m[2];
    this.base = `${u.origin}${m[1]}${m[2]}`;
    this.apiKey = apiKey;
    this.viewerToken = viewerToken || u.searchParams.get("token");
    if (!this.apiKey && !this.viewerToken) throw new Error("connect: give apiKey or viewerToken");
    this.lastSeq = after;
    this.ended = false;
    this.endReason = null;
    this.state = null;
    this._closed = false;
    this._abort = null;
    this._players = new Set();
    if (messages) this._pump();
  }

  /** `path` under the session with the viewer token (URLs a media element loads itself). */
  url(path = "", params = {}) {
    const u = new URL(this.base + path);
    // Never the API key: the server refuses keys in URLs (they end up in logs and history).
    if (!this.viewerToken) throw new Error(`${path || "url"}: media URLs need the session's viewerToken (an API key never goes in a URL)`);
    u.searchParams.set("token", this.viewerToken);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
    return u.href;
  }

  _headers(extra = {}) {
    const h = { ...extra };
    if (this.apiKey) h.Authorization = `Bearer ${this.apiKey}`;
    return h;
  }

  _fetchUrl(path, params = {}) {
    // With an API key the header authenticates; a viewer token goes in the query.
    const u = new URL(this.base + path);
    if (!this.apiKey && this.viewerToken) u.searchParams.set("token", this.viewerToken);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
    return u.href;
  }

  /** Replace the session's viewer token (owner only); resolves to the new one, the old one gets 401. */
  async rotateViewerToken() {
    if (!this.apiKey) throw new Error("rotateViewerToken: needs the apiKey of the session's owner");
    const resp = await fetch(this.base + "/viewer-token", { method: "POST", headers: this._headers({ Accept: "application/json" }) });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new Error((data && data.detail) || `HTTP ${resp.status}`);
    this.viewerToken = data.viewer_token;
    return this.viewerToken;
  }

  /** Run command `name` with `args`; resolves to its ack `{id, ok, error}` (a refusal too). */
  async sendCommand(name, args = {}, { id = `js-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}` } = {}) {
    if (!this.apiKey) throw new Error(`${name}: a viewer token is read-only; connect with an apiKey to send commands`);
    const resp = await fetch(this.base + "/commands", {
      method: "POST",
      headers: this._headers({ "Content-Type": "application/json", Accept: "application/json" }),
      body: JSON.stringify({ command: name, args, id }),
    });
    let body = null;
    try { body = await resp.json(); } catch (_) { /* empty body */ }
    if (resp.ok) return body;
    if (body && body.ack) return body.ack;  // the session refused it: that is its ack
    throw new HeliosError(resp.status, body);
  }

  /** The session's record (GET /v1/sessions/{id}). */
  async info() {
    const resp = await fetch(this._fetchUrl(""), { headers: this._headers({ Accept: "application/json" }) });
    const body = await resp.json().catch(() => null);
    if (!resp.ok) throw new HeliosError(resp.status, body);
    return body;
  }

  // ---- messages (SSE over fetch, so an API key travels in a header, never in a URL)
  async _pump() {
    let backoff = 500;
    while (!this._closed && !this.ended) {
      this._abort = new AbortController();
      try {
        const resp = await fetch(this._fetchUrl("/events", { after: this.lastSeq }), {
          headers: this._headers({ Accept: "text/event-stream" }), signal: this._abort.signal,
        });
        if (!resp.ok) {
          const body = await resp.json().catch(() => null);
          const err = new HeliosError(resp.status, body);
          this._emit("error", err);
          if (resp.status === 401 || resp.status === 404 || resp.status === 410) { this._finish(err.message); return; }
          throw err;
        }
        this._emit("open", { after: this.lastSeq });
        backoff = 500;
        await this._readSse(resp.body);
      } catch (err) {
        if (this._closed) return;
        this._emit("reconnecting", { after: this.lastSeq, error: String(err && err.message || err) });
      }
      if (this._closed || this.ended) return;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
    }
  }

  async _readSse(stream) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let text = "";
    let seq = null;
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      text += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, nl).replace(/\r$/, "");
        text = text.slice(nl + 1);
        if (line === "") {
          if (data.length) this._dispatch(seq, data.join("\n"));
          seq = null;
          data = [];
        } else if (line.startsWith("id:")) {
          seq = Number(line.slice(3).trim());
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }  // ":" comments are keep-alives
      }
    }
  }

  _dispatch(seq, raw) {
    let msg;
    try { msg = JSON.parse(raw); } catch (_) { return; }
    if (Number.isInteger(seq)) {
      if (seq <= this.lastSeq) return;  // already delivered before a reconnect
      this.lastSeq = seq;
      msg.seq = seq;  // as the Python client's Message: {type, data, seq}
    }
    if (msg.type === "state") this.state = msg.data;
    this._emit("message", msg);
    this._emit(msg.type, msg.data);
    if (msg.type === "event" && msg.data && msg.data.event === "session_ended") this._finish(msg.data.reason || "ended");
  }

  _finish(reason) {
    if (this.ended) return;
    this.ended = true;
    this.endReason = reason;
    this._emit("ended", reason);
    for (const p of this._players) p.stop();
  }

  /** Play the session in `element`: format "mp4" (MSE into a <video>), "hls" (<video>) or "mjpeg" (<img>). */
  attach(element, { format = "mp4" } = {}) {
    let player;
    if (format === "mp4") player = new MsePlayer(this, element);
    else if (format === "hls") player = new HlsPlayer(this, element);
    else if (format === "mjpeg") player = new MjpegPlayer(this, element);
    else throw new Error(`format: ${format} is not one of mp4, hls, mjpeg`);
    this._players.add(player);
    player.start();
    return player;
  }

  /** Stop the message stream and every attached player. */
  close() {
    this._closed = true;
    if (this._abort) this._abort.abort();
    for (const p of this._players) p.stop();
  }
}

/** Whether this browser can play the H.264 fMP4 stream through Media Source Extensions. */
export function mseSupported(codec = "avc1.64001f") {
  return Boolean(globalThis.MediaSource && MediaSource.isTypeSupported(`video/mp4; codecs="${codec}"`));
}

class Player extends Emitter {
  constructor(session, element) {
    super();
    this.session = session;
    this.element = element;
    this.stopped = false;
    this.latencyMs = null;   // generation end of the frame on screen -> now
    this.bytes = 0;
    this._samples = [];      // [time ms, bytes]
  }
  _count(n) {
    const now = performance.now();
    this.bytes += n;
    this._samples.push([now, n]);
    while (this._samples.length && now - this._samples[0][0] > RATE_WINDOW_MS) this._samples.shift();
  }
  /** Bits per second received over the last few seconds. */
  get bitrate() {
    if (this._samples.length < 2) return null;
    const span = (performance.now() - this._samples[0][0]) / 1000;
    return span > 0 ? (8 * this._samples.reduce((a, s) => a + s[1], 0)) / span : null;
  }
  get frames() {
    const q = this.element.getVideoPlaybackQuality && this.element.getVideoPlaybackQuality();
    return q ? q.totalVideoFrames - q.droppedVideoFrames : 0;
  }
  stop() { this.stopped = true; this.session._players.delete(this); }
}

// ---- fMP4 through Media Source Extensions --------------------------------------------
function u32(b, o) { return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3]; }
function type4(b, o) { return String.fromCharCode(b[o], b[o + 1], b[o + 2], b[o + 3]); }

/** The RFC 6381 codec of an H.264 init segment (the avcC box's profile, compatibility, level). */
export function codecOf(init) {
  for (let i = 4; i + 8 < init.length; i++) {
    if (init[i] === 0x61 && type4(init, i) === "avcC") {
      const hex = (x) => x.toString(16).padStart(2, "0");
      return `avc1.${hex(init[i + 5])}${hex(init[i + 6])}${hex(init[i + 7])}`;
    }
  }
  throw new Error("init segment has no avcC box (not H.264)");
}

class MsePlayer extends Player {
  constructor(session, element) {
    super(session, element);
    this.codec = null;
    this._refs = [];           // [media time s, produced Unix ms] from prft boxes
    this._queue = [];
    this._offset = 0;          // timeline offset of the current connection (each starts at 0)
    this._timescale = null;
  }

  async start() {
    const video = this.element;
    video.muted = true;
    video.playsInline = true;
    this.mediaSource = new MediaSource();
    video.src = URL.createObjectURL(this.mediaSource);
    await new Promise((r) => this.mediaSource.addEventListener("sourceopen", r, { once: true }));
    this._tick = setInterval(() => this._update(), 250);
    let backoff = 500;
    while (!this.stopped && !this.session.ended) {
      try {
        await this._connection();
        backoff = 500;
      } catch (err) {
        if (this.stopped) break;
        this._emit("error", err);
      }
      if (this.stopped || this.session.ended) break;
      await new Promise((r) => setTimeout(r, backoff));  // reconnect at the live edge (a keyframe)
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
    }
  }

  async _connection() {
    this._abort = new AbortController();
    const resp = await fetch(this.session._fetchUrl("/stream", { format: "mp4" }), {
      headers: this.session._headers(), signal: this._abort.signal,
    });
    if (!resp.ok) throw new HeliosError(resp.status, await resp.json().catch(() => null));
    // A new connection's timeline starts at 0: place it after what is buffered.
    this._offset = this.sb && this.sb.buffered.length ? this.sb.buffered.end(this.sb.buffered.length - 1) : 0;
    if (this.sb) this.sb.timestampOffset = this._offset;
    const reader = resp.body.getReader();
    let buf = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.stopped) return;
      this._count(value.length);
      const joined = new Uint8Array(buf.length + value.length);
      joined.set(buf);
      joined.set(value, buf.length);
      buf = joined;
      // Whole boxes only: an init segment, prft markers, moof+mdat fragments.
      let pos = 0;
      const out = [];
      while (buf.length - pos >= 8) {
        const size = u32(buf, pos);
        if (size < 8 || buf.length - pos < size) break;
        const kind = type4(buf, pos + 4);
        const box = buf.subarray(pos, pos + size);
        if (kind === "moov") this._onInit(box);
        if (kind === "prft") this._onPrft(box);
        else out.push(box);
        pos += size;
      }
      buf = buf.slice(pos);
      if (out.length && this.sb) await this._append(out);
      else if (out.length) this._pendingInit = (this._pendingInit || []).concat(out);
    }
  }

  _onInit(moov) {
    for (let i = 8; i + 8 < moov.length; i++) {  // moov/trak/mdia/mdhd timescale, for prft media times
      if (type4(moov, i) === "mdhd") { this._timescale = u32(moov, i + (moov[i + 4] === 1 ? 24 : 16)); break; }
    }
    if (this.sb) return;
    this.codec = codecOf(moov);
    const mime = `video/mp4; codecs="${this.codec}"`;
    if (!MediaSource.isTypeSupported(mime)) throw new Error(`this browser cannot play ${mime} through MSE`);
    this.sb = this.mediaSource.addSourceBuffer(mime);
    this.sb.mode = "segments";
    this._emit("codec", this.codec);
  }

  _onPrft(box) {
    const seconds = u32(box, 16), fraction = u32(box, 20);
    const media = u32(box, 24) * 2 ** 32 + u32(box, 28);
    const producedMs = (seconds - 2208988800 + fraction / 2 ** 32) * 1000;
    if (this._timescale) this._refs.push([this._offset + media / this._timescale, producedMs]);
    while (this._refs.length > 64) this._refs.shift();
  }

  async _append(boxes) {
    const parts = (this._pendingInit || []).concat(boxes);
    this._pendingInit = null;
    const total = parts.reduce((a, p) => a + p.length, 0);
    const data = new Uint8Array(total);
    let at = 0;
    for (const p of parts) { data.set(p, at); at += p.length; }
    await this._whenIdle();
    this.sb.appendBuffer(data);
    await this._whenIdle();
    this._chase();
    this._trim();
  }

  _whenIdle() {
    if (!this.sb.updating) return Promise.resolve();
    return new Promise((ok, bad) => {
      const done = () => { this.sb.removeEventListener("error", fail); ok(); };
      const fail = () => { this.sb.removeEventListener("updateend", done); bad(new Error("SourceBuffer append failed")); };
      this.sb.addEventListener("updateend", done, { once: true });
      this.sb.addEventListener("error", fail, { once: true });
    });
  }

  _chase() {
    // Join late at the live edge, and stay near it: every chunk starts with a keyframe.
    const video = this.element, b = video.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    if (video.currentTime < b.start(0) || end - video.currentTime > LIVE_LAG_S) {
      video.currentTime = Math.max(b.start(b.length - 1), end - 0.5);
    }
    if (video.paused) video.play().catch(() => { /* autoplay refused: the page shows controls */ });
  }

  _trim() {
    const video = this.element, b = this.sb.buffered;
    if (b.length && video.currentTime - b.start(0) > KEEP_BUFFER_S + 5 && !this.sb.updating) {
      this.sb.remove(0, video.currentTime - KEEP_BUFFER_S);
    }
  }

  _update() {
    const t = this.element.currentTime;
    let ref = null;
    for (const r of this._refs) if (r[0] <= t + 1e-3) ref = r;
    // A chunk is generated whole: every frame of it ended generation at its prft time. (Adding the
    // frame's offset in the chunk, as if frames were made at the playback rate, reads negative
    // when the player jumps towards the live edge of a chunk that has just arrived.)
    if (ref) this.latencyMs = Date.now() - ref[1];
    this._emit("stats", { latencyMs: this.latencyMs, bitrate: this.bitrate, frames: this.frames, currentTime: t });
  }

  stop() {
    super.stop();
    if (this._abort) this._abort.abort();
    clearInterval(this._tick);
  }
}

// ---- LL-HLS (hls.js vendored in web/vendor, or the browser's own HLS) ------------------
let hlsScript = null;
function loadHlsJs() {
  if (globalThis.Hls) return Promise.resolve(globalThis.Hls);
  if (!hlsScript) {
    hlsScript = new Promise((ok, bad) => {
      const s = document.createElement("script");
      s.src = HLS_SCRIPT;  // same origin: no CDN at run time, allowed by a script-src 'self' CSP
      s.onload = () => ok(globalThis.Hls);
      s.onerror = () => bad(new Error(`could not load ${HLS_SCRIPT}`));
      document.head.append(s);
    });
  }
  return hlsScript;
}

class HlsPlayer extends Player {
  async start() {
    const video = this.element;
    video.muted = true;
    video.playsInline = true;
    const src = this.session.url("/hls/index.m3u8");  // its URIs carry the viewer token
    const Hls = await loadHlsJs().catch(() => null);
    if (Hls && Hls.isSupported()) {
      this.hls = new Hls({ lowLatencyMode: true, enableWorker: false, liveSyncDurationCount: 2, backBufferLength: KEEP_BUFFER_S });
      this.hls.on(Hls.Events.FRAG_LOADED, (_, d) => this._count(d.payload ? d.payload.byteLength : 0));
      // The segment on screen: its EXT-X-PROGRAM-DATE-TIME is its chunk's generation end.
      this.hls.on(Hls.Events.FRAG_CHANGED, (_, d) => { this._fragDateMs = d.frag.programDateTime; });
      this.hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) this._emit("error", new Error(`hls.js: ${d.details}`)); });
      this.hls.loadSource(src);
      this.hls.attachMedia(video);
      this.engine = `hls.js ${Hls.version}`;
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = src;  // Safari: native LL-HLS
      this.engine = "native";
    } else {
      throw new Error("this browser plays neither hls.js (MSE) nor native HLS");
    }
    video.play().catch(() => { /* autoplay refused */ });
    this._tick = setInterval(() => {
      // Not `now - hls.playingDate`: playingDate adds the position within the segment, as if its
      // frames were made at the playback rate, and so runs ahead of a chunk generated whole.
      if (this.hls && this._fragDateMs) this.latencyMs = Date.now() - this._fragDateMs;
      this._emit("stats", { latencyMs: this.latencyMs, bitrate: this.bitrate, frames: this.frames, currentTime: video.currentTime });
    }, 250);
  }
  stop() {
    super.stop();
    clearInterval(this._tick);
    if (this.hls) this.hls.destroy();
  }
}

// ---- MJPEG into an <img> (the fallback: plays everywhere) ------------------------------
class MjpegPlayer extends Player {
  start() {
    this.element.src = this.session.url("/stream", { format: "mjpeg" });
    this.engine = "mjpeg";
  }
  get frames() { return 0; }
  stop() {
    super.stop();
    this.element.removeAttribute("src");
  }
}
