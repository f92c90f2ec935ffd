// The seller studio, a stage: camera and microphone preview with device choice, one-tap
// go live over WHIP, the product rail with Highlight always in reach, live orders and a
// revenue ticker, chat with inline moderation, viewer count and network health (from
// getStats). Ending stops the camera and shows the show's summary.
import { accessToken, api, currentUser, describeError, el, freshAccessToken, goLogin, money, renderHeader, showError, showStatus } from "./api.js";
import { EventClient } from "./events.js";
import { listOf, stockText, variantLabel } from "./product.js";
import { MediaSession } from "./whip.js";

renderHeader();
const id = decodeURIComponent(location.pathname.split("/")[2] || "");
const base = `/api/v1/seller/livestreams/${encodeURIComponent(id)}`;
const $ = (x) => document.getElementById(x);
const status = $("status");
const preview = $("preview");
const badge = $("state-badge");
const goLive = $("go-live");
const endBtn = $("end");
const chatLog = $("chat");
const orders = $("orders");

let local = null;       // the MediaStream being previewed / published
let media = null;       // the MediaSession while publishing
let streamState = "scheduled";
let products = [];      // products attached to this stream
let highlightedId = null;
let startedAt = null;   // when the show went live (for the clock and the summary)
let peak = 0;           // the most viewers seen during this page's life
let orderCount = 0;
let revenue = 0;
let currency = "USD";
let healthTimer = null;
let clockTimer = null;
const token = async () => (await freshAccessToken()) || accessToken();

function setBadge(text, live = false) {
  badge.textContent = text;
  badge.className = live ? "badge live" : "badge";
  document.body.dataset.publishState = text.toLowerCase();
}

// --- camera and microphone --------------------------------------------------------
async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kind, noun] of [[$("camera"), "videoinput", "Camera"], [$("mic"), "audioinput", "Microphone"]]) {
    const current = local?.getTracks().find((t) => t.kind === (kind === "videoinput" ? "video" : "audio"))?.getSettings().deviceId;
    select.replaceChildren(...devices.filter((d) => d.kind === kind)
      .map((d, i) => el("option", { value: d.deviceId }, d.label || `${noun} ${i + 1}`)));
    if (current) select.value = current;
  }
}

async function startPreview() {
  showStatus(status, "Starting your camera and microphone…", "loading");
  try {
    local = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: true,
    });
    preview.srcObject = local;
    await listDevices();
    showStatus(status, streamState === "live" ? "" : "Camera ready. Press “Go live” when you are.", "ok");
    goLive.disabled = streamState === "ended";
    $("preview-btn").textContent = "Restart";
    $("preview-btn").setAttribute("aria-label", "Restart the camera");
  } catch (err) {
    showStatus(status, `Camera or microphone not available: ${err.message}. Allow access in your browser and press “Start camera”.`, "error");
  }
}

async function switchDevice(kind, deviceId) {
  if (!local) return;
  try {
    const constraints = kind === "video" ? { video: { deviceId: { exact: deviceId } } } : { audio: { deviceId: { exact: deviceId } } };
    const fresh = (await navigator.mediaDevices.getUserMedia(constraints)).getTracks()[0];
    const old = local.getTracks().find((t) => t.kind === kind);
    if (media) await media.replaceTrack(kind, fresh);
    if (old) { local.removeTrack(old); old.stop(); }
    local.addTrack(fresh);
  } catch (err) {
    showStatus(status, `Could not switch device: ${err.message}`, "error");
  }
}
$("camera").addEventListener("change", (e) => switchDevice("video", e.target.value));
$("mic").addEventListener("change", (e) => switchDevice("audio", e.target.value));
$("preview-btn").addEventListener("click", () => { local?.getTracks().forEach((t) => t.stop()); startPreview(); });

// --- going live and ending ---------------------------------------------------------
async function startBroadcast() {
  if (!local) { await startPreview(); if (!local) return; }
  goLive.disabled = true;
  showStatus(status, "Going live…", "loading");
  try {
    if (streamState !== "live") await api(`${base}/start`, { method: "POST" });
  } catch (err) {
    if (err.code !== "invalid_state") { showError(status, err); goLive.disabled = false; return; }
  }
  streamState = "live";
  media = new MediaSession({
    mode: "publish", url: `/api/v1/livestreams/${encodeURIComponent(id)}/publish`, stream: local, token,
    onChannel: (dc) => events.attachChannel(dc),
    onState: (state, detail) => {
      if (state === "connected") { setBadge("LIVE", true); showStatus(status, "You are live.", "ok"); startClock(); }
      else if (state === "reconnecting" || state === "waiting") { setBadge("Reconnecting"); showStatus(status, "Connection to the server lost. Reconnecting…", "warn"); }
      else if (state === "connecting") setBadge("Connecting");
      else if (state === "failed") {
        setBadge("Error");
        const busy = detail.error?.code === "publisher_conflict";
        showStatus(status, busy
          ? "Another source is already live on this show (OBS, ffmpeg or the demo's test card). Stop it, then press “Go live” again."
          : `Could not go live: ${detail.error?.message}`, "error");
        clearInterval(healthTimer);
        media = null;
        goLive.disabled = false;
      }
    },
  });
  media.start();
  endBtn.disabled = false;
  watchHealth();
}

// --- the clock and network health -------------------------------------------------------
function startClock(from = startedAt || Date.now()) {
  startedAt = from;
  clearInterval(clockTimer);
  const tick = () => { $("clock").textContent = duration(Date.now() - startedAt); };
  tick();
  clockTimer = setInterval(tick, 1000);
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, "0");
  return s >= 3600 ? `${Math.floor(s / 3600)}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}` : `${Math.floor(s / 60)}:${pad(s % 60)}`;
}

// Outgoing video bitrate and the packet loss the server reports back (RTCP receiver
// reports), from the publishing peer connection's getStats() every two seconds.
function watchHealth() {
  clearInterval(healthTimer);
  let last = null;
  healthTimer = setInterval(async () => {
    const pc = media?.pc;
    if (!pc) return;
    let sent = 0;
    let lost = 0;
    let packets = 0;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "outbound-rtp" && r.kind === "video") { sent += r.bytesSent || 0; packets += r.packetsSent || 0; }
      if (r.type === "remote-inbound-rtp" && r.kind === "video") lost += Math.max(0, r.packetsLost || 0);
    });
    const now = performance.now();
    if (last) {
      const kbps = Math.round(((sent - last.sent) * 8) / (now - last.at));
      const dp = packets - last.packets;
      const loss = dp > 0 ? Math.min(100, (100 * Math.max(0, lost - last.lost)) / dp) : 0;
      const health = $("health");
      health.querySelector("[data-bitrate]").textContent = `▲ ${kbps} kbps`;
      health.querySelector("[data-loss]").textContent = `loss ${loss.toFixed(1)}%`;
      health.dataset.quality = kbps < 150 || loss > 5 ? "bad" : loss > 1 ? "fair" : "good";
      health.dataset.kbps = String(kbps);
    }
    last = { sent, lost, packets, at: now };
  }, 2000);
}

async function endBroadcast() {
  // Two presses instead of confirm(): keyboard and screen-reader friendly, no modal.
  if (endBtn.dataset.armed !== "1") {
    endBtn.dataset.armed = "1";
    endBtn.textContent = "Press again to end for everyone";
    setTimeout(() => { endBtn.dataset.armed = ""; endBtn.textContent = "End show"; }, 5000);
    return;
  }
  endBtn.dataset.armed = "";
  endBtn.textContent = "End show";
  endBtn.disabled = true;
  showStatus(status, "Ending the stream…", "loading");
  // Leave the media session first (a clean DELETE), then end the livestream for everyone.
  await media?.stop();
  media = null;
  try {
    await api(`${base}/end`, { method: "POST" });
  } catch (err) {
    if (err.code !== "invalid_state") { showError(status, err); endBtn.disabled = false; return; }
  }
  showEnded();
  showStatus(status, "The show has ended. Viewers see that it is over.", "ok");
}

// The show is over: the camera and microphone stop, live widgets go quiet, the summary
// (duration, peak viewers, orders, revenue: the livestream's analytics) takes the stage.
async function showEnded(stream = null) {
  streamState = "ended";
  setBadge("Ended");
  document.body.classList.add("is-ended");
  clearInterval(healthTimer);
  clearInterval(clockTimer);
  local?.getTracks().forEach((t) => t.stop());
  local = null;
  preview.srcObject = null;
  events.close();
  for (const id of ["go-live", "end", "preview-btn", "camera", "mic"]) $(id).disabled = true;
  $("chat-form").querySelectorAll("input, button").forEach((x) => { x.disabled = true; });
  $("viewers").textContent = "Ended";
  renderProducts();
  const summary = $("summary");
  summary.hidden = false;
  const started = stream?.startedAt ? Date.parse(stream.startedAt) : startedAt;
  const ended = stream?.endedAt ? Date.parse(stream.endedAt) : Date.now();
  summary.querySelector("[data-duration]").textContent = started ? duration(ended - started) : "—";
  try {
    const figures = await api(`/api/v1/seller/livestreams/${encodeURIComponent(id)}/analytics`);
    summary.querySelector("[data-peak]").textContent = String(Math.max(figures.peakViewers || 0, peak));
    summary.querySelector("[data-orders]").textContent = String(figures.orders ?? orderCount);
    summary.querySelector("[data-revenue]").textContent = figures.revenue === null ? "several currencies" : money(figures.revenue ?? revenue, figures.currency || currency);
  } catch (err) {
    summary.querySelector("[data-peak]").textContent = String(peak);
    summary.querySelector("[data-orders]").textContent = String(orderCount);
    summary.querySelector("[data-revenue]").textContent = money(revenue, currency);
  }
}
goLive.addEventListener("click", startBroadcast);
endBtn.addEventListener("click", endBroadcast);

// --- chat and moderation -------------------------------------------------------------
async function moderate(body, what) {
  try {
    await api(`${base}/moderation`, { method: "POST", body });
    showStatus(status, what, "ok");
  } catch (err) {
    showError(status, err);
  }
}

function addChat(m) {
  if (!m || chatLog.querySelector(`[data-id="${CSS.escape(String(m.id))}"]`)) return;
  const name = m.user?.name || "Someone";
  const mine = m.user?.id === currentUser()?.id;
  chatLog.append(el("li", { "data-id": m.id },
    el("span", { class: "who" }, name), el("span", { class: "text" }, m.message),
    mine || streamState === "ended" ? null : el("span", { class: "mod" },
      el("button", { type: "button", class: "small", "aria-label": `Delete message from ${name}`, onclick: () => moderate({ action: "delete", messageId: m.id }, "Message deleted.") }, "Delete"),
      el("button", { type: "button", class: "small", "aria-label": `Mute ${name} for 5 minutes`, onclick: () => moderate({ action: "mute", userId: m.user?.id, seconds: 300 }, `${name} is muted for 5 minutes.`) }, "Mute"),
      el("button", { type: "button", class: "small danger", "aria-label": `Ban ${name} from this stream`, onclick: () => moderate({ action: "ban", userId: m.user?.id }, `${name} is banned from this stream.`) }, "Ban"))));
  while (chatLog.children.length > 300) chatLog.firstElementChild.remove();
  chatLog.scrollTop = chatLog.scrollHeight;
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("chat-input");
  if (!input.value.trim()) return;
  try { events.send("chat:send", { message: input.value.trim() }); input.value = ""; } catch (err) { showError(status, err); }
});

// --- products ------------------------------------------------------------------------
function productOf(x) { return x.product || x; }

function renderProducts(shown = highlightedId) {
  highlightedId = shown;
  const list = $("products");
  const ended = streamState === "ended";
  list.replaceChildren(...products.map((x) => {
    const p = productOf(x);
    const on = p.id === highlightedId;
    const left = (p.variants || []).reduce((n, v) => n + Math.max(0, v.stock || 0), 0);
    const image = (p.images || [])[0];
    return el("li", { "data-product-id": p.id, class: on ? "on" : "" },
      image ? el("img", { src: image, alt: "" }) : el("span", { class: "noimg", "aria-hidden": "true" }, "🛍"),
      el("div", { class: "what" },
        el("strong", {}, p.title),
        el("span", { class: "small" }, money(p.price, p.currency), " · ",
          el("span", { class: left <= 0 ? "stock out" : left <= 5 ? "stock low" : "stock", title: (p.variants || []).map((v) => `${variantLabel(v)}: ${stockText(v.stock)}`).join(", ") }, left <= 0 ? "Sold out" : `${left} left`))),
      ended ? null : el("div", { class: "acts" }, on
        ? el("span", { class: "badge live", "data-highlight": p.id }, "On show")
        : el("button", { type: "button", class: "small primary", "data-highlight": p.id, "aria-label": `Highlight ${p.title}`, onclick: () => highlight(p.id) }, "Highlight"),
      dropPicker(p)));
  }));
  if (!products.length) list.append(el("li", { class: "empty" }, "No products in this stream yet. Add one below."));
}

// A drop: viewers see a countdown on the video, then the product with Buy.
function dropPicker(p) {
  const pick = el("select", { class: "drop-pick", "data-drop": p.id, "aria-label": `Drop ${p.title} in…` },
    el("option", { value: "" }, "Drop in…"), el("option", { value: "30" }, "30 s"),
    el("option", { value: "60" }, "1 min"), el("option", { value: "300" }, "5 min"));
  pick.addEventListener("change", () => { if (pick.value) announceDrop(p, Number(pick.value)); });
  return pick;
}

async function announceDrop(p, inSeconds) {
  const ps = $("products-status");
  try {
    await api(`${base}/drop`, { method: "POST", body: { productId: p.id, inSeconds } });
    showStatus(ps, `Drop announced: ${p.title} in ${inSeconds < 60 ? `${inSeconds} s` : `${inSeconds / 60} min`}.`, "ok");
  } catch (err) {
    showError(ps, err);
  }
  renderProducts();
}

async function highlight(productId) {
  const ps = $("products-status");
  showStatus(ps, "Showing the product to viewers…", "loading");
  try {
    await api(`${base}/highlight`, { method: "POST", body: { productId } });
    showStatus(ps, "Viewers now see this product.", "ok");
    setTimeout(() => { if (ps.textContent === "Viewers now see this product.") showStatus(ps, ""); }, 3000);
    renderProducts(productId);
  } catch (err) {
    showError(ps, err);
  }
}

async function loadProducts() {
  const ps = $("products-status");
  try {
    products = listOf(await api(`/api/v1/livestreams/${encodeURIComponent(id)}/products`));
    const current = products.filter((x) => x.highlightedAt).sort((a, b) => String(b.highlightedAt).localeCompare(String(a.highlightedAt)))[0];
    renderProducts(current && productOf(current).id);
    const mine = listOf(await api("/api/v1/seller/products?limit=100"));
    const attached = new Set(products.map((x) => productOf(x).id));
    const choices = mine.filter((p) => !attached.has(p.id));
    $("attach").replaceChildren(...choices.map((p) => el("option", { value: p.id }, p.title)));
    $("attach-form").hidden = !choices.length;
  } catch (err) {
    showError(ps, err);
  }
}

$("attach-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const productId = $("attach").value;
  if (!productId) return;
  try {
    await api(`${base}/products`, { method: "POST", body: { productId } });
    await loadProducts();
  } catch (err) {
    showError($("products-status"), err);
  }
});

// --- realtime --------------------------------------------------------------------------
function addOrder(o) {
  orders.querySelector("[data-empty]")?.remove();
  if (orders.querySelector(`[data-order-id="${CSS.escape(String(o.id || o.orderId))}"]`)) return;
  orderCount += 1;
  revenue += o.total ?? o.amount ?? 0;
  currency = o.currency || currency;
  $("order-count").textContent = String(orderCount);
  $("revenue").textContent = money(revenue, currency);
  $("revenue").classList.remove("bump"); void $("revenue").offsetWidth; $("revenue").classList.add("bump");
  const items = (o.items || []).map((i) => `${i.qty}× ${i.title || i.productTitle || "item"}`).join(", ");
  orders.prepend(el("li", { "data-order-id": o.id || o.orderId },
    el("strong", {}, money(o.total ?? o.amount, o.currency)), " ",
    el("span", {}, [o.buyer?.name || o.user?.name, items].filter(Boolean).join(" · ") || "New order"),
    o.status ? el("span", { class: "badge ok" }, o.status) : null));
}

function setViewers(n) {
  if (streamState === "ended") return;
  peak = Math.max(peak, n);
  $("viewers").textContent = `${n} watching`;
}

const events = new EventClient({
  livestreamId: id, token,
  onStatus: (s) => { if (s === "reconnecting" && streamState !== "ended") showStatus(status, "Chat connection lost. Reconnecting…", "warn"); },
});
events
  .on("welcome", (p) => {
    const room = p.room || p.snapshot || p;
    for (const m of room.recentChat || room.chat || []) addChat(m);
    if (room.viewerCount !== undefined) setViewers(room.viewerCount);
  })
  .on("chat:new", addChat)
  .on("chat:deleted", (p) => {
    const li = chatLog.querySelector(`[data-id="${CSS.escape(String(p.id || p.messageId))}"]`);
    if (li) li.replaceChildren(el("span", { class: "deleted" }, "Message removed"));
  })
  .on("viewer:count", (p) => setViewers(p.count ?? p.viewers ?? p.viewerCount ?? 0))
  .on("stream:state", (p) => { if ((p.state || p.status) === "ended" && streamState !== "ended") showEnded(); })
  .on("order:new", (p) => addOrder(p.order || p))
  .on("product:highlighted", (p) => renderProducts(productOf(p).id))
  .on("stock:update", (p) => {
    for (const x of products) for (const v of productOf(x).variants || []) if (v.id === p.variantId) v.stock = p.stock;
    renderProducts();
  })
  .on("error", (p) => showStatus(status, p.message || "Something went wrong.", "error"));

async function main() {
  const user = currentUser();
  if (!user) { goLogin(); return; }
  let stream;
  try {
    stream = await api(`/api/v1/livestreams/${encodeURIComponent(id)}`);
  } catch (err) {
    showStatus(status, err.status === 404 ? "This livestream does not exist." : describeError(err), "error");
    return;
  }
  $("title").textContent = stream.title;
  document.title = `Studio: ${stream.title} · Kein Shopstream`;
  streamState = stream.status;
  if (stream.streamKey) $("stream-key").textContent = `OBS or ffmpeg (WHIP): ${location.origin}/api/v1/livestreams/${stream.id}/publish, the stream key as Bearer token.`;
  loadOrderFigures();
  if (streamState === "ended") {
    await loadProducts();
    showEnded(stream);
    return;
  }
  if (streamState === "live" || streamState === "paused") {
    setBadge("Live (not from this page)");
    endBtn.disabled = false;
    if (stream.startedAt) startClock(Date.parse(stream.startedAt));
  }
  loadProducts();
  events.start();
  await startPreview();
}

// Orders and revenue of this show so far (a reload mid-show keeps the ticker right).
async function loadOrderFigures() {
  try {
    const figures = await api(`/api/v1/seller/livestreams/${encodeURIComponent(id)}/analytics`);
    orderCount = Math.max(orderCount, figures.orders || 0);
    if (figures.revenue !== null && figures.revenue !== undefined) revenue = Math.max(revenue, figures.revenue);
    currency = figures.currency || currency;
    $("order-count").textContent = String(orderCount);
    $("revenue").textContent = money(revenue, currency);
  } catch { /* the ticker counts from the live events alone */ }
}

window.addEventListener("pagehide", () => { media?.leaveNow(); events.close(); });
main();
