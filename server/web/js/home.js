// Home: live now, coming up, and the product catalog with add-to-cart.
import { api, currentUser, describeError, el, goLogin, renderHeader, showError, showStatus, when } from "./api.js";
import { listOf, productCard } from "./product.js";

renderHeader();
const status = document.getElementById("status");
const cartStatus = document.getElementById("cart-status");

function streamCard(s, live) {
  const thumb = el("div", { class: `thumb${live ? " live-thumb" : ""}` }, s.thumbnailUrl ? el("img", { src: s.thumbnailUrl, alt: "" }) : el("span", { "aria-hidden": "true" }, live ? "● LIVE" : "Coming soon"));
  // No thumbnail: a live show is pictured by the product it has on show.
  if (!s.thumbnailUrl && s.highlightedProductId) {
    api(`/api/v1/products/${encodeURIComponent(s.highlightedProductId)}`, { auth: false })
      .then((p) => { if (p.images?.[0]) thumb.replaceChildren(el("img", { src: p.images[0], alt: "" })); })
      .catch(() => {});
  }
  return el("article", { class: `card${live ? " show-live" : ""}` },
    thumb,
    el("div", { class: "row" }, live ? el("span", { class: "badge live" }, "LIVE") : el("span", { class: "badge" }, when(s.scheduledAt) || "Scheduled"),
      s.viewerCount ? el("span", { class: "small muted" }, `${s.viewerCount} watching`) : null),
    el("h3", {}, s.title),
    s.seller?.displayName ? el("p", { class: "small muted" }, s.seller.displayName) : null,
    el("a", { class: `button${live ? " primary" : ""}`, href: `/live/${s.id}` }, live ? "Watch now" : "Open stream page"));
}

async function addToCart({ product, variant, qty }) {
  if (!currentUser()) { goLogin(); return; }
  showStatus(cartStatus, `Adding ${product.title}…`, "loading");
  try {
    await api("/api/v1/me/cart/items", { method: "POST", body: { productId: product.id, variantId: variant.id, qty } });
    cartStatus.replaceChildren(`${product.title} is in your cart. `, el("a", { href: "/cart" }, "View cart"));
    cartStatus.className = "status ok";
  } catch (err) {
    showError(cartStatus, err);
  }
}

async function loadProducts(search = "") {
  const box = document.getElementById("products");
  box.replaceChildren(el("p", { class: "loading" }, "Loading products…"));
  try {
    const q = new URLSearchParams({ limit: "24" });
    if (search) q.set("q", search);
    const products = listOf(await api(`/api/v1/products?${q}`));
    box.replaceChildren(...products.map((p) => productCard(p, { onAdd: addToCart }).node));
    if (!products.length) box.append(el("p", { class: "empty" }, search ? `No products match “${search}”.` : "No products yet."));
  } catch (err) {
    box.replaceChildren(el("p", { class: "status error" }, `Products could not be loaded: ${describeError(err)}`));
  }
}

async function loadStreams() {
  const [live, upcoming] = await Promise.allSettled([
    api("/api/v1/livestreams?status=live"), api("/api/v1/livestreams?status=upcoming"),
  ]);
  const liveBox = document.getElementById("live");
  const upBox = document.getElementById("upcoming");
  if (live.status === "fulfilled") {
    const items = listOf(live.value);
    liveBox.replaceChildren(...items.map((s) => streamCard(s, true)));
    if (!items.length) liveBox.append(el("p", { class: "empty" }, "Nobody is live right now. Check the upcoming streams below."));
  } else {
    liveBox.replaceChildren(el("p", { class: "status error" }, `Live streams could not be loaded: ${describeError(live.reason)}`));
  }
  if (upcoming.status === "fulfilled") {
    const items = listOf(upcoming.value);
    upBox.replaceChildren(...items.map((s) => streamCard(s, false)));
    if (!items.length) upBox.append(el("p", { class: "empty" }, "No streams scheduled yet."));
  } else {
    upBox.replaceChildren(el("p", { class: "status error" }, `Upcoming streams could not be loaded: ${describeError(upcoming.reason)}`));
  }
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  loadProducts(document.getElementById("q").value.trim());
});

Promise.all([loadStreams(), loadProducts()]).finally(() => showStatus(status, ""));
