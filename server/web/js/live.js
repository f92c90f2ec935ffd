// The live room: WHEP video full height, chat and reactions over it, the highlighted
// product as a card on the video with one-tap Buy, checkout in a bottom sheet while the
// video keeps playing, and one "show ended" state. Leaving (closing the tab, switching
// away) ends the media session at once with a keepalive DELETE.
//
// A drop (`drop:announced`, or the pending one in `welcome`) shows a banner on the video
// counting down each second, which becomes the product card with Buy at zero; a
// scheduled show counts down to its start.
import { accessToken, api, currentUser, describeError, el, freshAccessToken, goLogin, money, renderHeader, showError, showStatus, when } from "./api.js";
import { EventClient } from "./events.js";
import { openCheckout } from "./livecheckout.js";
import { liveCard } from "./livecard.js";
import { listOf } from "./product.js";
import { MediaSession } from "./whip.js";

renderHeader();
const id = decodeURIComponent(location.pathname.split("/")[2] || "");
const $ = (x) => document.getElementById(x);
const video = $("video");
const overlay = $("overlay");
const badge = $("state-badge");
const status = $("status");
const buyStatus = $("buy-status");
const chatLog = $("chat");
const unmute = $("unmute");
const REACTIONS = { heart: "❤️", fire: "🔥", clap: "👏", wow: "😲" };
// A lost chat connection is only worth a message if it lasts (reconnects are quick).
const LOST_NOTICE_MS = 2500;

let streamState = "connecting"; // scheduled | live | paused | ended (from the server)
let mediaState = "connecting";
let card = null;
let stream = null;
let countdownTimer = null;
let lostTimer = null;
const token = async () => (currentUser() ? (await freshAccessToken()) || accessToken() : null);

// --- what the viewer sees on the stage ---------------------------------------
function countdown(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (!(ms > 0)) return "any minute now";
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return `in ${h ? `${h}:${pad(m)}` : m}:${pad(s % 60)}`;
}

function render() {
  let text = "";
  let badgeText = "Connecting";
  let badgeClass = "badge";
  clearTimeout(countdownTimer);
  if (streamState === "ended") {
    text = "";
    badgeText = "Ended";
  } else if (streamState === "scheduled") {
    text = stream?.scheduledAt
      ? `The show starts ${countdown(stream.scheduledAt)} (${when(stream.scheduledAt)}). Stay here: it starts by itself.`
      : "The seller is not live yet. This page connects by itself when they go live.";
    badgeText = "Soon";
    if (stream?.scheduledAt) countdownTimer = setTimeout(render, 1000);
  } else if (streamState === "paused") {
    text = "The seller paused the show. Stay here, it will continue.";
    badgeText = "Paused";
  } else if (mediaState === "connected") {
    badgeText = "LIVE";
    badgeClass = "badge live";
  } else if (mediaState === "waiting") {
    text = "Waiting for the seller's video…";
    badgeText = "Waiting";
  } else if (mediaState === "reconnecting") {
    text = "Connection lost. Reconnecting…";
    badgeText = "Reconnecting";
  } else if (mediaState === "failed") {
    text = "The video could not be started. Reload the page to try again.";
    badgeText = "Error";
  } else {
    text = "Connecting to the show…";
  }
  overlay.textContent = text;
  overlay.hidden = !text;
  badge.textContent = badgeText;
  badge.className = badgeClass;
  unmute.hidden = streamState === "ended" || mediaState !== "connected" || !video.muted;
  document.body.dataset.streamState = streamState;
  document.body.dataset.mediaState = mediaState;
}

function setStreamState(state) {
  if (!state || state === streamState) return;
  streamState = state;
  if (state === "ended") showEnded();
  else if (state === "live" && mediaState !== "connected") media.retryNow();
  render();
}

// One "show ended" state: no video, no reconnecting, no chat box, the show's products.
function showEnded() {
  media.stop({ leave: false }); // ending the show closed every session on the server
  events.close();
  clearTimeout(lostTimer);
  hideDrop();
  video.srcObject = null;
  unmute.hidden = true;
  showStatus(status, "");
  document.body.classList.add("is-ended");
  $("chat-form").querySelectorAll("input, button").forEach((x) => { x.disabled = true; });
  $("chat-hint").textContent = "Chat is closed: the show has ended.";
  $("ended").hidden = false;
  api(`/api/v1/livestreams/${encodeURIComponent(id)}/products`).then((data) => {
    $("ended-products").replaceChildren(...listOf(data).map((x) => endedProduct(x.product || x)));
  }).catch(() => {});
}

function endedProduct(p) {
  const image = (p.images || [])[0];
  const variant = (p.variants || []).find((v) => v.stock > 0);
  const add = el("button", { type: "button", class: "small", disabled: !variant }, variant ? "Add to cart" : "Sold out");
  add.addEventListener("click", async () => {
    if (!currentUser()) { goLogin(); return; }
    add.disabled = true;
    try {
      await api("/api/v1/me/cart/items", { method: "POST", body: { productId: p.id, variantId: variant.id, qty: 1 } });
      add.textContent = "In your cart";
    } catch (err) {
      add.disabled = false;
      showError(status, err);
    }
  });
  return el("li", { "data-product-id": p.id },
    image ? el("img", { src: image, alt: "" }) : el("span", { class: "noimg", "aria-hidden": "true" }, "🛍"),
    el("span", { class: "name" }, p.title), el("strong", {}, money(p.price, p.currency)), add);
}

const tsOf = (m) => (typeof m.ts === "number" ? m.ts * 1000 : Date.parse(m.ts || m.createdAt) || 0);

// --- chat ---------------------------------------------------------------------
function addChat(m) {
  if (!m || chatLog.querySelector(`[data-id="${CSS.escape(String(m.id))}"]`)) return;
  chatLog.append(el("li", { "data-id": m.id, "data-user": m.user?.id },
    el("span", { class: "who" }, m.user?.name || "Someone"), " ", el("span", { class: "text" }, m.message)));
  // The overlay keeps the newest few; older lines fade out at the top.
  while (chatLog.children.length > 60) chatLog.firstElementChild.remove();
  chatLog.scrollTop = chatLog.scrollHeight;
}

function deleteChat(p) {
  const li = chatLog.querySelector(`[data-id="${CSS.escape(String(p.id || p.messageId))}"]`);
  if (li) li.replaceChildren(el("span", { class: "deleted" }, "Message removed by the seller"));
}

// --- the product on the video -----------------------------------------------------
function showProduct(product) {
  if (!product?.id) return;
  const fresh = card?.product.id !== product.id;
  card = liveCard(product, { onBuy: buyNow });
  $("product").replaceChildren(card.node);
  if (fresh) card.node.classList.add("pop");
}

// --- a drop: the countdown on the video, then the product --------------------------
let dropTimer = null;
const clock = (s) => `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
const spoken = (s) => (s < 90 ? `${s} seconds` : `${Math.round(s / 60)} minutes`);

function showDrop(drop) {
  const at = Date.parse(drop?.at);
  const product = drop?.product;
  if (!product?.id || !(at > Date.now()) || streamState === "ended") return;
  clearTimeout(dropTimer);
  const banner = $("drop");
  banner.dataset.productId = product.id;
  banner.querySelector("[data-drop-title]").textContent = product.title;
  // Said once: a live region that changed every second would talk over the show.
  banner.querySelector("[data-drop-said]").textContent =
    `Drop announced: ${product.title} goes on sale in ${spoken(Math.ceil((at - Date.now()) / 1000))}.`;
  banner.hidden = false;
  const tick = () => {
    const left = Math.ceil((at - Date.now()) / 1000);
    if (left <= 0) {
      hideDrop();
      showProduct(product);
      return;
    }
    banner.querySelector("[data-drop-clock]").textContent = clock(left);
    // The next tick on the next whole second of the countdown, not 1 s after a late one.
    dropTimer = setTimeout(tick, ((at - Date.now()) % 1000) || 1000);
  };
  tick();
}

function hideDrop() {
  clearTimeout(dropTimer);
  $("drop").hidden = true;
}

async function buyNow({ product, variant }) {
  if (!currentUser()) { goLogin(); return; }
  await openCheckout({
    dialog: $("buy-dialog"), body: $("buy-body"), product, variant, livestreamId: id, events,
    onVariant: (v) => card?.select(v.id),
    onPaid: () => showStatus(buyStatus, ""),
  });
}
$("buy-close").addEventListener("click", () => $("buy-dialog").close());

// --- realtime -------------------------------------------------------------------
const events = new EventClient({
  livestreamId: id, token,
  onStatus: (s) => {
    clearTimeout(lostTimer);
    if (streamState === "ended") return;
    if (s === "reconnecting") {
      lostTimer = setTimeout(() => {
        if (streamState !== "ended") showStatus(status, "Chat connection lost. Reconnecting…", "warn");
      }, LOST_NOTICE_MS);
      checkEnded();
    } else if (s === "open") showStatus(status, "");
  },
});

events
  .on("welcome", (p) => {
    const room = p.room || p.snapshot || p;
    if (room.highlightedProduct) showProduct(room.highlightedProduct);
    if (room.drop) showDrop(room.drop);
    if (room.viewerCount !== undefined) setViewers(room.viewerCount);
    for (const m of room.recentChat || room.chat || []) addChat(m);
    setStreamState(room.state || room.status);
  })
  .on("chat:new", addChat)
  .on("chat:deleted", deleteChat)
  .on("product:highlighted", (p) => showProduct(p.product || p))
  .on("drop:announced", showDrop)
  .on("viewer:count", (p) => setViewers(p.count ?? p.viewers ?? p.viewerCount))
  .on("stock:update", (p) => card?.setStock(p.variantId, p.stock))
  .on("stream:state", (p) => setStreamState(p.state || p.status))
  .on("reaction", (p) => {
    // Batched counts per kind since the last tick; a few bursts stand for many.
    for (const [kind, n] of Object.entries(p.counts || (p.kind ? { [p.kind]: 1 } : {}))) {
      for (let i = 0; i < Math.min(n, 5); i++) setTimeout(() => burst(kind), i * 120);
    }
  })
  // The publisher switched codec: this session cannot carry it, so watch again.
  .on("stream:renegotiate", () => media.retryNow())
  // The layer the server forwards after a quality pick (none: the publisher sends one).
  .on("quality:current", (p) => { $("quality-now").textContent = p.layer ? `(${p.layer})` : ""; })
  .on("error", (p) => showStatus(status, p.message || "Something went wrong.", "error"));

// A pinned quality (simulcast shows): the server switches this viewer's layer at once.
$("quality").addEventListener("change", (e) => {
  try { events.send("quality:set", { layer: e.target.value }); } catch (err) { showError(status, err); }
});

function setViewers(n) {
  if (typeof n !== "number") return;
  document.querySelector("#viewers [data-count]").textContent = n >= 10000 ? `${(n / 1000).toFixed(0)}k` : String(n);
  $("viewers").dataset.viewers = String(n);
}

function burst(kind) {
  const emoji = REACTIONS[kind];
  if (!emoji) return;
  const node = el("span", { class: "burst" }, emoji);
  node.style.setProperty("--drift", `${Math.round(Math.random() * 60 - 30)}px`);
  $("bursts").append(node);
  setTimeout(() => node.remove(), 2200);
}

document.querySelectorAll(".reactions button").forEach((b) => b.addEventListener("click", () => {
  try { events.send("reaction:send", { kind: b.dataset.kind }); burst(b.dataset.kind); } catch (err) { showError(status, err); }
}));

const chatInput = $("chat-input");
if (!currentUser()) {
  $("chat-hint").replaceChildren(el("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, "Log in"), " to chat and buy.");
}
$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!currentUser()) { goLogin(); return; }
  const message = chatInput.value.trim();
  if (!message) return;
  try {
    events.send("chat:send", { message });
    chatInput.value = "";
  } catch (err) {
    showError(status, err);
  }
});

// --- media ----------------------------------------------------------------------
unmute.addEventListener("click", () => { video.muted = false; unmute.hidden = true; video.play().catch(() => {}); });

const media = new MediaSession({
  mode: "watch", url: `/api/v1/livestreams/${encodeURIComponent(id)}/watch`, token,
  onChannel: (dc) => events.attachChannel(dc),
  onTrack: (remote) => {
    if (video.srcObject !== remote) video.srcObject = remote;
    video.play().catch(() => {});
    render();
  },
  onState: (state, detail) => {
    if (streamState === "ended") return;
    mediaState = state;
    if (state === "failed") showStatus(status, `Video error: ${detail.error?.message || "unknown"}`, "error");
    if (state === "reconnecting" || state === "waiting") checkEnded();
    render();
  },
});

// A lost connection may mean the show ended (the server closes every session then,
// possibly before its `stream:state` reaches us): ask once instead of retrying blindly.
let checking = false;
let lastCheck = 0;
async function checkEnded() {
  // At most one question every few seconds, however many retries the loops make.
  if (checking || streamState === "ended" || Date.now() - lastCheck < 3000) return;
  checking = true;
  lastCheck = Date.now();
  try {
    const s = await api(`/api/v1/livestreams/${encodeURIComponent(id)}`);
    if (s.status === "ended") setStreamState("ended");
  } catch { /* offline: the reconnect loop goes on */ } finally {
    checking = false;
  }
}

// --- leaving and coming back --------------------------------------------------------
// A closed tab or an app switched away must not keep counting as a viewer: leave at
// once (keepalive DELETE, no token refresh), and join again when the page is back.
let away = false;
function leave() {
  if (away || streamState === "ended") return;
  away = true;
  media.leaveNow();
  events.close();
}
function comeBack() {
  if (!away || streamState === "ended") return;
  away = false;
  events.reopen();
  media.start();
}
window.addEventListener("pagehide", leave);
document.addEventListener("visibilitychange", () => (document.visibilityState === "hidden" ? leave() : comeBack()));
window.addEventListener("pageshow", (e) => { if (e.persisted) comeBack(); });

async function main() {
  render();
  try {
    stream = await api(`/api/v1/livestreams/${encodeURIComponent(id)}`);
  } catch (err) {
    overlay.textContent = err.status === 404 ? "This show does not exist." : `The show could not be loaded: ${describeError(err)}`;
    badge.textContent = "Error";
    $("title").textContent = "Show not available";
    return;
  }
  document.title = `${stream.title} · Kein Shopstream`;
  $("title").textContent = stream.title;
  $("subtitle").textContent = stream.seller?.displayName || stream.description || "";
  setStreamState(stream.status || "live");
  if (streamState === "ended") return;
  api(`/api/v1/livestreams/${encodeURIComponent(id)}/products`).then((data) => {
    if (card) return;
    const highlighted = listOf(data).filter((p) => p.highlightedAt).sort((a, b) => String(b.highlightedAt).localeCompare(String(a.highlightedAt)))[0];
    if (highlighted) showProduct(highlighted.product || highlighted);
  }).catch(() => {});
  // History first (oldest at the top), then live messages append below it.
  await api(`/api/v1/livestreams/${encodeURIComponent(id)}/chat?limit=50`).then((data) => {
    listOf(data).sort((a, b) => tsOf(a) - tsOf(b)).forEach(addChat);
  }).catch(() => {});
  if (document.visibilityState === "hidden") { away = true; return; }
  events.start();
  media.start();
}

main();
