// Helios Serve browser player: create a session, steer it, watch it. Plain JS, no build step.
// Session creation and models use the HTTP API (docs/http-api.md); commands, messages and
// video go through the JS SDK (helios.js): H.264 through Media Source Extensions when the
// browser can, LL-HLS (hls.js, vendored) on request, MJPEG as the fallback.
import { connect, mseSupported } from "./helios.js";

const MAX_IMAGE_BYTES = 64 * 1024;
const KEY_SLOT = "helios.apiKey";  // sessionStorage, only with "remember in this tab" ticked
const DEFAULT_SIZE = { width: 640, height: 384 };
const $ = (id) => document.getElementById(id);

const app = {
  apiKey: "",
  sessionId: null,
  viewerToken: null,
  model: null,
  size: DEFAULT_SIZE,
  models: null,
  events: null,
  state: null,
  viewer: false,       // read-only share-link mode
  ended: false,
  framesDrawn: 0,
  lastChunk: -1,
  session: null,       // the SDK's HeliosSession
  player: null,        // the SDK's player of the current video format
  format: null,        // "mp4" | "hls" | "mjpeg" actually playing
};
window.heliosApp = app;  // for debugging and tests

// ---------------------------------------------------------------- helpers
// The API key lives in page memory only. With "remember in this tab" ticked it is also kept
// in sessionStorage (gone when the tab closes); never in localStorage, cookies or the URL.
function rememberKey() {
  const key = $("api-key").value.trim();
  try {
    if ($("remember-key").checked && key) sessionStorage.setItem(KEY_SLOT, key);
    else sessionStorage.removeItem(KEY_SLOT);
  } catch (_) { /* storage disabled: memory only */ }
}

function recallKey() {
  try {
    localStorage.removeItem(KEY_SLOT);  // written by earlier versions of this page: wipe it
    return sessionStorage.getItem(KEY_SLOT) || "";
  } catch (_) { return ""; }
}

function showError(message) {
  const li = document.createElement("li");
  li.className = "error";
  li.textContent = `${new Date().toLocaleTimeString()} — ${message}`;
  $("errors").prepend(li);
  while ($("errors").children.length > 20) $("errors").lastChild.remove();
}

function notice(message) {
  // A short log of what happened (events, acks), newest first.
  const li = document.createElement("li");
  li.textContent = message;
  $("log").prepend(li);
  while ($("log").children.length > 30) $("log").lastChild.remove();
}

function detailText(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const loc = (d.loc || []).filter((p) => p !== "body").join(".");
      return loc ? `${loc}: ${d.msg}` : String(d.msg || JSON.stringify(d));
    }).join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (app.apiKey) headers.Authorization = `Bearer ${app.apiKey}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new Error(`${method} ${path}: server unreachable (${err.message})`);
  }
  let data = null;
  try { data = await resp.json(); } catch (_) { /* empty or non-JSON body */ }
  if (!resp.ok) {
    const ackError = data && data.ack && data.ack.error;
    const err = new Error(ackError || (data && data.detail !== undefined ? detailText(data.detail) : `HTTP ${resp.status}`));
    err.status = resp.status;
    throw err;
  }
  return { status: resp.status, data, headers: resp.headers };
}

function sessionPath(suffix = "") {
  return `/v1/sessions/${encodeURIComponent(app.sessionId)}${suffix}`;
}

function withToken(path, extra = {}) {
  const url = new URL(path, window.location.origin);
  if (app.viewerToken) url.searchParams.set("token", app.viewerToken);
  for (const [k, v] of Object.entries(extra)) url.searchParams.set(k, String(v));
  return url.pathname + url.search;
}

// ---------------------------------------------------------------- models
function modelEntries(models) {
  const list = Array.isArray(models) ? models : (models && (models.models || models.data)) || [];
  return list.map((m) => (typeof m === "string" ? { name: m } : { ...m, name: m.name || m.id || m.model }));
}

function sizeOf(modelName) {
  for (const m of modelEntries(app.models)) {
    if (modelName && m.name !== modelName) continue;
    let w = m.width, h = m.height;
    if ((w === undefined || h === undefined) && Array.isArray(m.resolution)) [h, w] = m.resolution;
    if (Number.isInteger(w) && Number.isInteger(h)) return { width: w, height: h };
  }
  return DEFAULT_SIZE;
}

async function loadModels() {
  try {
    const { data } = await api("GET", "/v1/models");
    app.models = data;
    const select = $("model");
    const keep = select.value;
    select.querySelectorAll("option:not([value=''])").forEach((o) => o.remove());
    for (const m of modelEntries(data)) {
      if (!m.name) continue;
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = m.description ? `${m.name} — ${m.description}` : m.name;
      select.append(opt);
    }
    if (keep) select.value = keep;
    else if ([...select.options].some((o) => o.value === "test-pattern")) select.value = "test-pattern";
  } catch (err) {
    if (err.status === 401 || err.status === 403) notice("enter the API key to list models");
    else showError(`models: ${err.message}`);
  }
}

// ---------------------------------------------------------------- session lifecycle
function setBadge(text, state) {
  $("conn").textContent = text;
  $("conn").dataset.state = state;
}

function enableControls(on) {
  for (const id of ["set-prompt", "schedule-prompt", "start", "pause", "resume", "reset", "set-seed", "image", "end"]) {
    $(id).disabled = !on;
  }
  $("create").disabled = on;
}

async function createSession() {
  app.apiKey = $("api-key").value.trim();
  if (!app.apiKey) { showError("api key: enter the API key first"); return; }
  rememberKey();
  const body = {};
  if ($("model").value) body.model = $("model").value;
  if ($("create-seed").value !== "") body.seed = Number($("create-seed").value);
  $("create").disabled = true;
  try {
    if (!app.models) await loadModels();
    let { status, data, headers } = await api("POST", "/v1/sessions", body);
    app.sessionId = data.session_id;
    app.viewerToken = data.viewer_token || null;
    app.model = data.model || body.model || null;
    while (data.status === "queued") {
      $("queue").hidden = false;
      $("queue").textContent = `Waiting for a free model replica: position ${data.position ?? "?"} in the queue…`;
      setBadge("queued", "queued");
      const wait = Math.min(5, Math.max(0.5, Number(headers.get("Retry-After")) || 1));
      await new Promise((r) => setTimeout(r, wait * 1000));
      ({ status, data, headers } = await api("GET", sessionPath()));
      if (data.status === "ended") throw new Error(`session ended while queued: ${data.end_reason}`);
    }
    $("queue").hidden = true;
    onSessionActive(data);
  } catch (err) {
    showError(`create session: ${err.message}`);
    $("create").disabled = false;
  }
}

function onSessionActive(info) {
  app.ended = false;
  app.size = sizeOf(app.model);
  $("session-id").textContent = app.sessionId;
  setBadge(`session ${app.sessionId.slice(0, 8)}`, "active");
  if (!app.viewer) {
    enableControls(true);
    showShareLink();
    $("share").hidden = false;
  }
  if (info && info.state) renderState(info.state);
  openEvents();
  openVideo();
}

function showShareLink() {
  const link = new URL(window.location.pathname, window.location.origin);
  link.searchParams.set("session", app.sessionId);
  if (app.viewerToken) link.searchParams.set("token", app.viewerToken);
  $("share-link").value = link.toString();
}

// A new viewer token revokes the old one. This page's messages come with its API key, but
// the media elements load URLs carrying the token: reopen the video with the new one.
async function rotateShareLink() {
  if (!app.session) return;
  try {
    app.viewerToken = await app.session.rotateViewerToken();
    showShareLink();
    openVideo();
    notice("new share link: the old one no longer works");
  } catch (err) {
    showError(`new share link: ${err.message}`);
  }
}

async function endSession() {
  if (!app.sessionId) return;
  try {
    await api("DELETE", sessionPath());
  } catch (err) {
    showError(`end session: ${err.message}`);
  }
  closeSession("deleted");
}

function closeSession(reason) {
  app.ended = true;
  if (app.session) { app.session.close(); }
  setBadge(`ended: ${reason}`, "ended");
  enableControls(false);
  if (app.viewer) $("create").disabled = true;
}

// ---------------------------------------------------------------- commands
async function sendCommand(command, args = {}) {
  if (!app.session) { showError(`${command}: create a session first`); return null; }
  try {
    const ack = await app.session.sendCommand(command, args);
    if (ack && ack.ok === false) { showError(`${command}: ${ack.error || "refused"}`); return null; }
    notice(`${command}: ok`);
    return ack;
  } catch (err) {
    showError(`${command}: ${err.message}`);
    return null;
  }
}

function promptText() {
  const text = $("prompt").value.trim();
  if (!text) showError("prompt: type a prompt first");
  return text;
}

async function onStart() {
  // The protocol needs a prompt at chunk 0: send the typed one first if nothing is scheduled.
  const scheduled = (app.state && app.state.scheduled_prompts) || {};
  const started = app.state && (app.state.running || app.state.current_chunk > 0);
  if (!started && scheduled["0"] === undefined && scheduled[0] === undefined) {
    const text = promptText();
    if (!text) return;
    if (!(await sendCommand("set_prompt", { prompt: text }))) return;
  }
  await sendCommand("start");
}

// ---------------------------------------------------------------- image upload
function fitRect(srcW, srcH, dstW, dstH) {
  // Center crop to the target aspect ratio (the server does the same).
  const target = dstW / dstH;
  if (srcW / srcH > target) {
    const w = Math.round(srcH * target);
    return { sx: Math.floor((srcW - w) / 2), sy: 0, sw: w, sh: srcH };
  }
  const h = Math.round(srcW / target);
  return { sx: 0, sy: Math.floor((srcH - h) / 2), sw: srcW, sh: h };
}

function canvasToBlob(canvas, quality) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
}

function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function videoSize() {
  // The stream's resolution as the visible element shows it, or null before the first frame.
  const el = visibleVideo();
  const width = el.tagName === "IMG" ? el.naturalWidth : el.videoWidth;
  const height = el.tagName === "IMG" ? el.naturalHeight : el.videoHeight;
  return width ? { width, height } : null;
}
app.videoSize = videoSize;

async function compressImage(file, size) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (_) {
    throw new Error(`image: ${file.name || "file"} is not a decodable image`);
  }
  let { width, height } = size;
  for (let attempt = 0; attempt < 6; attempt++) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const r = fitRect(bitmap.width, bitmap.height, width, height);
    canvas.getContext("2d").drawImage(bitmap, r.sx, r.sy, r.sw, r.sh, 0, 0, width, height);
    for (const q of [0.92, 0.85, 0.75, 0.6, 0.45, 0.3]) {
      const blob = await canvasToBlob(canvas, q);
      if (blob && blob.size <= MAX_IMAGE_BYTES) return { blob, width, height, quality: q };
    }
    width = Math.max(8, Math.round(width * 0.75));
    height = Math.max(8, Math.round(height * 0.75));
  }
  throw new Error("image: could not compress it under 64 KB");
}

async function onImageChosen(event) {
  const file = event.target.files && event.target.files[0];
  if (!file) return;
  $("image-info").textContent = "";
  try {
    // The model's resolution: what the video shows, else what /v1/models says, else 640x384.
    const size = videoSize() || app.size;
    const { blob, width, height, quality } = await compressImage(file, size);
    const dataUrl = await blobToDataUrl(blob);
    $("image-info").textContent = `${file.name}: ${width}×${height} JPEG q=${quality}, ${(blob.size / 1024).toFixed(1)} KB`;
    await sendCommand("set_image", { image_b64: dataUrl, transition: $("transition").value });
  } catch (err) {
    showError(err.message);
  } finally {
    event.target.value = "";
  }
}

// ---------------------------------------------------------------- messages (SDK: SSE with resume)
function openEvents() {
  if (app.session) app.session.close();
  const session = connect(sessionPath(), { apiKey: app.viewer ? null : app.apiKey || null, viewerToken: app.viewerToken });
  app.session = session;
  session.on("message", handleMessage);
  session.on("reconnecting", () => { if (!app.ended) setBadge("reconnecting…", "queued"); });
  session.on("open", () => { if (!app.ended) setBadge(`session ${app.sessionId.slice(0, 8)}`, "active"); });
}

function handleMessage(msg) {
  const data = msg.data || {};
  if (msg.type === "state") {
    renderState(data);
  } else if (msg.type === "event") {
    switch (data.event) {
      case "chunk_complete": addTimelineRow(data); break;
      case "error": showError(data.message || "error"); break;
      case "generation_reset": clearTimeline(); notice("reset"); break;
      case "prompt_switched": notice(`prompt switched: ${data.new_prompt}`); break;
      case "image_set": notice(`image set (${data.width}×${data.height})`); break;
      case "seed_set": notice(`seed set: ${data.seed}`); break;
      case "session_ended": closeSession(data.reason || "ended"); break;
      default: break;
    }
  } else if (msg.type === "ack" && data.ok === false) {
    showError(data.error || "command refused");
  }
}

const STATE_FIELDS = ["running", "paused", "current_chunk", "current_frame", "current_prompt", "seed", "effective_fps"];

function renderState(state) {
  app.state = state;
  const dl = $("state");
  dl.textContent = "";
  for (const key of STATE_FIELDS) {
    if (!(key in state)) continue;
    const dt = document.createElement("dt");
    dt.textContent = key.replace(/_/g, " ");
    const dd = document.createElement("dd");
    dd.dataset.field = key;
    let v = state[key];
    if (typeof v === "number" && !Number.isInteger(v)) v = v.toFixed(1);
    dd.textContent = v === null || v === undefined ? "—" : String(v);
    dl.append(dt, dd);
  }
  const scheduled = state.scheduled_prompts || {};
  const keys = Object.keys(scheduled);
  if (keys.length) {
    const dt = document.createElement("dt");
    dt.textContent = "scheduled";
    const dd = document.createElement("dd");
    dd.dataset.field = "scheduled_prompts";
    dd.textContent = keys.sort((a, b) => a - b).map((k) => `${k}: ${scheduled[k]}`).join(" · ");
    dl.append(dt, dd);
  }
  if ($("seed").value === "" && Number.isInteger(state.seed)) $("seed").value = state.seed;
}

function clearTimeline() {
  $("timeline").querySelector("tbody").textContent = "";
  app.lastChunk = -1;
}

function addTimelineRow(data) {
  app.lastChunk = data.chunk;
  const tr = document.createElement("tr");
  tr.dataset.chunk = data.chunk;
  for (const v of [data.chunk, data.prompt ?? "", data.gen_ms === undefined ? "" : Math.round(data.gen_ms)]) {
    const td = document.createElement("td");
    td.textContent = String(v);
    tr.append(td);
  }
  const tbody = $("timeline").querySelector("tbody");
  tbody.prepend(tr);
  while (tbody.children.length > 200) tbody.lastChild.remove();
}

// ---------------------------------------------------------------- video (SDK: MSE | HLS | MJPEG)
function chosenFormat() {
  const want = $("video-format").value;
  if (want === "auto") return mseSupported() ? "mp4" : "mjpeg";
  if (want === "mp4" && !mseSupported()) { showError("video: this browser has no H.264 Media Source Extensions; showing MJPEG"); return "mjpeg"; }
  return want;
}

function visibleVideo() {
  return app.format === "mjpeg" ? $("video") : $("mse-video");
}

function openVideo() {
  if (!app.session) return;
  if (app.player) app.player.stop();
  app.format = chosenFormat();
  const img = $("video"), video = $("mse-video");
  img.hidden = app.format !== "mjpeg";
  video.hidden = app.format === "mjpeg";
  $("video-placeholder").hidden = true;
  const player = app.session.attach(app.format === "mjpeg" ? img : video, { format: app.format });
  app.player = player;
  $("engine").textContent = app.format === "mp4" ? "H.264 via MSE" : app.format === "hls" ? "LL-HLS" : "MJPEG";
  player.on("error", (err) => showError(`video: ${err.message}`));
  player.on("codec", (codec) => { $("engine").textContent = `H.264 via MSE (${codec})`; });
}

setInterval(() => {
  const p = app.player;
  if (!p) return;
  $("latency").textContent = p.latencyMs === null ? "—" : `${Math.round(p.latencyMs)} ms`;
  const rate = p.bitrate;
  $("bitrate").textContent = rate === null ? "—" : `${(rate / 1000).toFixed(0)} kbit/s`;
  if (p.engine) $("engine").dataset.engine = p.engine;
}, 500);

$("video").addEventListener("error", () => {
  // The MJPEG stream broke (network, server restart): reopen it.
  if (app.ended || !app.sessionId || app.format !== "mjpeg") return;
  setTimeout(() => { if (!app.ended) openVideo(); }, 1000);
});

// Count frames actually drawn: sample the <img> into a tiny canvas and compare pixels.
const probe = document.createElement("canvas");
probe.width = 16;
probe.height = 16;
let lastSignature = "";
setInterval(() => {
  const img = visibleVideo();
  if (img.hidden || (img.tagName === "IMG" ? !img.complete || !img.naturalWidth : img.readyState < 2)) return;
  try {
    const ctx = probe.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0, 16, 16);
    const px = ctx.getImageData(0, 0, 16, 16).data;
    let sig = 0;
    for (let i = 0; i < px.length; i += 1) sig = (sig * 31 + px[i]) | 0;
    const s = String(sig);
    if (s !== lastSignature) {
      lastSignature = s;
      app.framesDrawn += 1;
      $("frames-drawn").textContent = String(app.framesDrawn);
    }
  } catch (_) { /* not decodable yet */ }
}, 100);

// ---------------------------------------------------------------- wiring
function wire() {
  $("create").addEventListener("click", createSession);
  $("end").addEventListener("click", endSession);
  $("set-prompt").addEventListener("click", () => { const t = promptText(); if (t) sendCommand("set_prompt", { prompt: t }); });
  $("schedule-prompt").addEventListener("click", () => {
    const t = promptText();
    const chunk = Number($("schedule-chunk").value);
    if (!Number.isInteger(chunk) || chunk < 0) { showError("chunk: enter a chunk number (0 or more)"); return; }
    if (t) sendCommand("schedule_prompt", { prompt: t, chunk });
  });
  $("start").addEventListener("click", onStart);
  $("pause").addEventListener("click", () => sendCommand("pause"));
  $("resume").addEventListener("click", () => sendCommand("resume"));
  $("reset").addEventListener("click", () => sendCommand("reset"));
  $("set-seed").addEventListener("click", () => {
    const seed = Number($("seed").value);
    if ($("seed").value === "" || !Number.isInteger(seed) || seed < 0) { showError("seed: enter a whole number (0 or more)"); return; }
    sendCommand("set_seed", { seed });
  });
  $("image").addEventListener("change", onImageChosen);
  $("copy-share").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("share-link").value); notice("share link copied"); }
    catch (_) { $("share-link").select(); notice("select and copy the link"); }
  });
  $("rotate-share").addEventListener("click", rotateShareLink);
  $("api-key").addEventListener("change", () => { app.apiKey = $("api-key").value.trim(); rememberKey(); loadModels(); });
  $("remember-key").addEventListener("change", rememberKey);
  $("video-format").addEventListener("change", () => { if (app.session && !app.ended) openVideo(); });
}

async function init() {
  wire();
  const params = new URLSearchParams(window.location.search);
  const shared = params.get("session");
  if (shared) {
    // Share link: read-only viewer with the session's viewer token.
    app.viewer = true;
    document.body.classList.add("viewer");
    app.sessionId = shared;
    app.viewerToken = params.get("token");
    try {
      const { data } = await api("GET", withToken(sessionPath()));
      app.model = data.model || null;
      if (data.status === "ended") {
        $("session-id").textContent = app.sessionId;
        if (data.state) renderState(data.state);
        closeSession(data.end_reason || "ended");
        return;
      }
      onSessionActive(data);
    } catch (err) {
      showError(`session ${shared}: ${err.message}`);
    }
    return;
  }
  const saved = recallKey();
  $("api-key").value = saved;
  $("remember-key").checked = Boolean(saved);
  app.apiKey = saved;
  loadModels();
}

init();
