// The seller studio: camera and microphone preview with device choice, go live over
// WHIP, end, viewer count, chat with moderation, products to highlight, live orders.
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
    $("preview-btn").textContent = "Restart camera";
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
      if (state === "connected") { setBadge("LIVE", true); showStatus(status, "You are live.", "ok"); }
      else if (state === "reconnecting" || state === "waiting") { setBadge("Reconnecting"); showStatus(status, "Connection to the server lost. Reconnecting…", "warn"); }
      else if (state === "connecting") setBadge("Connecting");
      else if (state === "failed") { setBadge("Error"); showStatus(status, `Could not go live: ${detail.error?.message}`, "error"); goLive.disabled = false; }
    },
  });
  media.start();
  endBtn.disabled = false;
}

async function endBroadcast() {
  // Two presses instead of confirm(): keyboard and screen-reader friendly, no modal.
  if (endBtn.dataset.armed !== "1") {
    endBtn.dataset.armed = "1";
    endBtn.textContent = "Press again to end for everyone";
    setTimeout(() => { endBtn.dataset.armed = ""; endBtn.textContent = "End stream"; }, 5000);
    return;
  }
  endBtn.dataset.armed = "";
  endBtn.textContent = "End stream";
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
  streamState = "ended";
  setBadge("Ended");
  goLive.disabled = true;
  showStatus(status, "The stream has ended. Viewers see that it is over.", "ok");
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
    mine ? null : el("span", { class: "row" },
      el("button", { type: "button", class: "small", "aria-label": `Delete message from ${name}`, onclick: () => moderate({ action: "delete", messageId: m.id }, "Message deleted.") }, "Delete"),
      el("button", { type: "button", class: "small", "aria-label": `Mute ${name} for 5 minutes`, onclick: () => moderate({ action: "mute", userId: m.user?.id, seconds: 300 }, `${name} is muted for 5 minutes.`) }, "Mute 5 min"),
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
  list.replaceChildren(...products.map((x) => {
    const p = productOf(x);
    const on = p.id === highlightedId;
    return el("li", { "data-product-id": p.id },
      el("div", { class: "row spread" },
        el("div", {}, el("strong", {}, p.title), " ", on ? el("span", { class: "badge live" }, "Showing") : null,
          el("div", { class: "small muted" }, money(p.price, p.currency), " · ",
            (p.variants || []).map((v) => `${variantLabel(v)}: ${stockText(v.stock)}`).join(", "))),
        el("button", { type: "button", class: on ? "small" : "small primary", "data-highlight": p.id, onclick: () => highlight(p.id) }, on ? "Show again" : "Highlight")));
  }));
  if (!products.length) list.append(el("li", { class: "empty" }, "No products in this stream yet. Add one below."));
}

async function highlight(productId) {
  const ps = $("products-status");
  showStatus(ps, "Showing the product to viewers…", "loading");
  try {
    await api(`${base}/highlight`, { method: "POST", body: { productId } });
    showStatus(ps, "Viewers now see this product.", "ok");
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
  const items = (o.items || []).map((i) => `${i.qty}× ${i.title || i.productTitle || "item"}`).join(", ");
  orders.prepend(el("li", { "data-order-id": o.id || o.orderId },
    el("strong", {}, money(o.total ?? o.amount, o.currency)), " ",
    el("span", {}, [o.buyer?.name || o.user?.name, items].filter(Boolean).join(" · ") || "New order"),
    o.status ? el("span", { class: "badge ok" }, o.status) : null));
}

const events = new EventClient({
  livestreamId: id, token,
  onStatus: (s) => { if (s === "reconnecting") showStatus(status, "Chat connection lost. Reconnecting…", "warn"); },
});
events
  .on("welcome", (p) => {
    const room = p.room || p.snapshot || p;
    for (const m of room.recentChat || room.chat || []) addChat(m);
    if (room.viewerCount !== undefined) $("viewers").textContent = `${room.viewerCount} watching`;
  })
  .on("chat:new", addChat)
  .on("chat:deleted", (p) => {
    const li = chatLog.querySelector(`[data-id="${CSS.escape(String(p.id || p.messageId))}"]`);
    if (li) li.replaceChildren(el("span", { class: "deleted" }, "Message removed"));
  })
  .on("viewer:count", (p) => { $("viewers").textContent = `${p.count ?? p.viewers ?? p.viewerCount ?? 0} watching`; })
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
  $("title").textContent = `Studio: ${stream.title}`;
  document.title = `Studio: ${stream.title} · Kein Shopstream`;
  streamState = stream.status;
  if (stream.streamKey) $("stream-key").textContent = `For OBS or ffmpeg (WHIP): ${location.origin}/api/v1/livestreams/${stream.id}/publish with the stream key as Bearer token.`;
  if (streamState === "ended") {
    setBadge("Ended");
    showStatus(status, "This stream has ended. Schedule a new one from the dashboard.", "warn");
    return;
  }
  if (streamState === "live") {
    setBadge("Live (not from this page)");
    endBtn.disabled = false;
  }
  loadProducts();
  events.start();
  await startPreview();
}

window.addEventListener("pagehide", () => { media?.stop({ keepalive: true }); events.close(); });
main();
