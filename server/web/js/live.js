// The live viewer page: WHEP video, the event protocol (chat, highlighted product,
// stock, viewer count, reactions, stream state) and buy-now with payment in a dialog.
import { accessToken, api, currentUser, describeError, el, freshAccessToken, goLogin, newKey, renderHeader, showError, showStatus, when } from "./api.js";
import { EventClient } from "./events.js";
import { addressPicker, paymentForm } from "./payment.js";
import { listOf, productCard } from "./product.js";
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
const REACTIONS = { heart: "❤️", fire: "🔥", clap: "👏", wow: "😮" };

let streamState = "connecting"; // scheduled | live | paused | ended (from the server)
let mediaState = "connecting";
let card = null;
let stream = null;
const token = async () => (currentUser() ? (await freshAccessToken()) || accessToken() : null);

// --- what the viewer sees on the stage ---------------------------------------
function render() {
  let text = "";
  let badgeText = "Connecting";
  let badgeClass = "badge";
  if (streamState === "ended") {
    text = "This stream has ended. Thanks for watching!";
    badgeText = "Ended";
  } else if (streamState === "scheduled") {
    text = stream?.scheduledAt
      ? `This stream starts ${when(stream.scheduledAt)}. This page connects by itself when the seller goes live.`
      : "The seller is not live yet. This page connects by itself when they go live.";
    badgeText = "Not live yet";
  } else if (streamState === "paused") {
    text = "The seller paused the stream. Stay here, it will continue.";
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
    text = "Connecting to the stream…";
  }
  overlay.textContent = text;
  overlay.hidden = !text;
  badge.textContent = badgeText;
  badge.className = badgeClass;
  document.body.dataset.streamState = streamState;
  document.body.dataset.mediaState = mediaState;
}

function setStreamState(state) {
  if (!state || state === streamState) return;
  streamState = state;
  if (state === "ended") {
    media.stop({ leave: false }); // ending the stream closed every session on the server
    events.close();
    video.srcObject = null;
    $("chat-form").querySelectorAll("input, button").forEach((x) => { x.disabled = true; });
    $("chat-hint").textContent = "Chat is closed because the stream has ended.";
  } else if (state === "live" && mediaState !== "connected") {
    media.retryNow();
  }
  render();
}

const tsOf = (m) => (typeof m.ts === "number" ? m.ts * 1000 : Date.parse(m.ts || m.createdAt) || 0);

// --- chat ---------------------------------------------------------------------
function addChat(m) {
  if (!m || chatLog.querySelector(`[data-id="${CSS.escape(String(m.id))}"]`)) return;
  chatLog.append(el("li", { "data-id": m.id, "data-user": m.user?.id },
    el("span", { class: "who" }, m.user?.name || "Someone"), el("span", { class: "text" }, m.message)));
  while (chatLog.children.length > 200) chatLog.firstElementChild.remove();
  chatLog.scrollTop = chatLog.scrollHeight;
}

function deleteChat(p) {
  const li = chatLog.querySelector(`[data-id="${CSS.escape(String(p.id || p.messageId))}"]`);
  if (li) li.replaceChildren(el("span", { class: "deleted" }, "Message removed by the seller"));
}

// --- product card ---------------------------------------------------------------
function showProduct(product) {
  if (!product?.id) return;
  card = productCard(product, { onBuy: buyNow, onAdd: addToCart, highlight: true });
  $("product").replaceChildren(card.node);
}

async function addToCart({ product, variant, qty }) {
  if (!currentUser()) { goLogin(); return; }
  showStatus(buyStatus, "Adding to your cart…", "loading");
  try {
    await api("/api/v1/me/cart/items", { method: "POST", body: { productId: product.id, variantId: variant.id, qty } });
    buyStatus.replaceChildren("Added. ", el("a", { href: "/cart" }, "View cart"));
    buyStatus.className = "status ok";
  } catch (err) {
    showError(buyStatus, err);
  }
}

const dialog = $("buy-dialog");
$("buy-close").addEventListener("click", () => dialog.close());

// Buy now goes over the live room (DESIGN.md `buy:now`); when the room cannot take it
// (not connected, or a server without in-room buying) the same checkout session comes
// from the HTTP API, with one idempotency key per attempt.
async function reserve({ product, variant, qty, addressId }) {
  try {
    const ack = await events.request("buy:now", { productId: product.id, variantId: variant.id, qty, addressId });
    return ack.checkout || ack.session || ack;
  } catch (err) {
    if (err.code && err.code !== "unavailable") throw err;
  }
  return api("/api/v1/checkout/session", {
    method: "POST", headers: { "Idempotency-Key": newKey() },
    body: { addressId, items: [{ productId: product.id, variantId: variant.id, qty }], livestreamId: id },
  });
}

async function buyNow({ product, variant, qty }) {
  if (!currentUser()) { goLogin(); return; }
  const body = $("buy-body");
  const step = el("div", { class: "status loading", role: "status" }, "Loading your addresses…");
  body.replaceChildren(el("p", {}, el("strong", {}, product.title), ` × ${qty}`), step);
  dialog.showModal();
  let picker;
  try {
    const box = el("div");
    body.insertBefore(box, step);
    picker = await addressPicker(box);
    showStatus(step, "");
  } catch (err) {
    showError(step, err);
    return;
  }
  const go = el("button", { type: "button", class: "primary", "data-continue": true }, "Continue to payment");
  body.append(el("p", {}, go));
  go.addEventListener("click", async () => {
    let addressId;
    try { addressId = await picker.resolve(); } catch { return; }
    go.disabled = true;
    showStatus(step, "Reserving your item…", "loading");
    try {
      const checkout = await reserve({ product, variant, qty, addressId });
      showStatus(step, "");
      const pay = el("div");
      body.replaceChildren(el("p", {}, el("strong", {}, product.title), ` × ${qty}`), pay);
      await paymentForm(pay, checkout, {
        onPaid: () => {
          body.append(el("p", { class: "status ok", "data-paid": true }, "Order placed! ", el("a", { href: "/orders" }, "See your orders")));
          showStatus(buyStatus, "Thanks for your order!", "ok");
        },
      });
    } catch (err) {
      go.disabled = false;
      showStatus(step, err.code === "out_of_stock" ? "Sorry, that just sold out." : describeError(err), "error");
    }
  });
}

// --- realtime -------------------------------------------------------------------
const events = new EventClient({
  livestreamId: id, token,
  onStatus: (s) => {
    if (streamState === "ended") return;
    if (s === "reconnecting") showStatus(status, "Chat connection lost. Reconnecting…", "warn");
    else if (s === "open") showStatus(status, "");
  },
});

events
  .on("welcome", (p) => {
    const room = p.room || p.snapshot || p;
    if (room.highlightedProduct) showProduct(room.highlightedProduct);
    if (room.viewerCount !== undefined) setViewers(room.viewerCount);
    for (const m of room.recentChat || room.chat || []) addChat(m);
    setStreamState(room.state || room.status);
  })
  .on("chat:new", addChat)
  .on("chat:deleted", deleteChat)
  .on("product:highlighted", (p) => showProduct(p.product || p))
  .on("viewer:count", (p) => setViewers(p.count ?? p.viewers ?? p.viewerCount))
  .on("stock:update", (p) => card?.setStock(p.variantId, p.stock))
  .on("stream:state", (p) => setStreamState(p.state || p.status))
  // The publisher switched codec: this session cannot carry it, so watch again.
  .on("stream:renegotiate", () => media.retryNow())
  .on("reaction", (p) => burst(p.kind))
  .on("error", (p) => showStatus(status, p.message || "Something went wrong.", "error"));

function setViewers(n) {
  if (typeof n !== "number") return;
  $("viewers").textContent = `${n} watching`;
}

function burst(kind) {
  const emoji = REACTIONS[kind];
  if (!emoji) return;
  const node = el("span", { class: "reaction-burst", "aria-hidden": "true" }, emoji);
  document.querySelector(".stage").append(node);
  setTimeout(() => node.remove(), 1700);
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
const unmute = $("unmute");
unmute.addEventListener("click", () => { video.muted = false; unmute.hidden = true; video.play().catch(() => {}); });

const media = new MediaSession({
  mode: "watch", url: `/api/v1/livestreams/${encodeURIComponent(id)}/watch`, token,
  onChannel: (dc) => events.attachChannel(dc),
  onTrack: (remote) => {
    if (video.srcObject !== remote) video.srcObject = remote;
    video.play().catch(() => {});
    unmute.hidden = !video.muted;
  },
  onState: (state, detail) => {
    mediaState = state;
    if (state === "failed") showStatus(status, `Video error: ${detail.error?.message || "unknown"}`, "error");
    render();
  },
});

async function main() {
  render();
  try {
    stream = await api(`/api/v1/livestreams/${encodeURIComponent(id)}`);
  } catch (err) {
    overlay.textContent = err.status === 404 ? "This stream does not exist." : `The stream could not be loaded: ${describeError(err)}`;
    badge.textContent = "Error";
    $("title").textContent = "Stream not available";
    return;
  }
  document.title = `${stream.title} · Kein Shopstream`;
  $("title").textContent = stream.title;
  $("subtitle").textContent = [stream.seller?.displayName, stream.description].filter(Boolean).join(" · ");
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
  events.start();
  media.start();
}

window.addEventListener("pagehide", () => { media.stop({ keepalive: true }); events.close(); });
main();
