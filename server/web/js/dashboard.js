// The seller dashboard: become a seller, analytics, livestream scheduling, products
// with variants and stock, orders to fulfil.
import { api, currentUser, describeError, el, goLogin, money, renderHeader, saveSession, session, showError, showStatus, when } from "./api.js";
import { listOf, variantLabel } from "./product.js";

renderHeader();
const $ = (x) => document.getElementById(x);
const status = $("status");
let me = null;

const LABELS = {
  revenue: "Revenue", orders: "Orders", units: "Units sold", unitsSold: "Units sold", viewers: "Viewers", peakViewers: "Peak viewers",
  totalViewers: "Total viewers", watchSeconds: "Watch time (s)", conversionRate: "Conversion", livestreams: "Livestreams",
};
const human = (k) => LABELS[k] || k.replace(/([A-Z])/g, " $1").replace(/^./, (c) => c.toUpperCase());

async function loadAnalytics() {
  const box = $("stats");
  try {
    const data = await api("/api/v1/seller/analytics");
    const currency = data.currency || "USD";
    const entries = Object.entries(data).filter(([, v]) => typeof v === "number");
    box.replaceChildren(...entries.map(([k, v]) => el("div", { class: "stat" },
      el("b", {}, /revenue|sales|amount/i.test(k) ? money(v, currency) : /rate/i.test(k) ? `${(v * 100).toFixed(1)}%` : v.toLocaleString()),
      el("span", { class: "small muted" }, human(k)))));
    if (!entries.length) box.append(el("p", { class: "empty" }, "No figures yet: they appear after your first stream and orders."));
  } catch (err) {
    box.replaceChildren(el("p", { class: "status error" }, `Analytics unavailable: ${describeError(err)}`));
  }
}

function streamItem(s) {
  const live = s.status === "live" || s.status === "paused";
  return el("li", { "data-stream-id": s.id }, el("div", { class: "row spread" },
    el("div", {}, el("strong", {}, s.title), " ",
      el("span", { class: `badge${live ? " live" : s.status === "ended" ? "" : " warn"}` }, s.status),
      el("div", { class: "small muted" }, s.scheduledAt ? `Starts ${when(s.scheduledAt)}` : "")),
    s.status === "ended" ? el("a", { href: `/live/${s.id}` }, "Replay page")
      : el("a", { class: "button small primary", href: `/studio/${s.id}` }, live ? "Back to studio" : "Open studio")));
}

async function loadStreams() {
  const list = $("streams");
  let streams;
  try {
    streams = listOf(await api("/api/v1/seller/livestreams?limit=50"));
  } catch {
    // Older servers have no seller listing: the public lists, filtered to this seller.
    const sellerId = me?.seller?.id;
    const parts = await Promise.all(["live", "upcoming"].map((st) => api(`/api/v1/livestreams?status=${st}&limit=50`).then(listOf, () => [])));
    streams = parts.flat().filter((s) => (s.sellerId || s.seller?.id) === sellerId);
  }
  list.replaceChildren(...streams.map(streamItem));
  if (!streams.length) list.append(el("li", { class: "empty" }, "No livestreams yet. Schedule one below."));
}

function stockControl(product, variant) {
  const n = `${variant.id}`;
  const input = el("input", { id: `delta-${n}`, type: "number", value: "1", class: "small", "aria-label": `Units to add to ${product.title} ${variantLabel(variant)} (negative to remove)` });
  const save = el("button", { type: "button", class: "small" }, "Apply");
  save.addEventListener("click", async () => {
    const stockDelta = parseInt(input.value, 10);
    if (!stockDelta) { input.focus(); return; }
    save.disabled = true;
    try {
      await api(`/api/v1/seller/products/${product.id}/variants/${variant.id}`, { method: "PATCH", body: { stockDelta, reason: stockDelta > 0 ? "restock" : "correction" } });
      showStatus(status, `Stock of ${product.title} (${variantLabel(variant)}) changed by ${stockDelta}.`, "ok");
      await loadProducts();
    } catch (err) {
      showError(status, err);
      save.disabled = false;
    }
  });
  return el("div", { class: "row" }, input, save);
}

async function loadProducts() {
  const body = $("products");
  try {
    const products = listOf(await api("/api/v1/seller/products?limit=100"));
    body.replaceChildren(...products.flatMap((p) => {
      const variants = p.variants?.length ? p.variants : [null];
      return variants.map((v, i) => el("tr", {},
        i === 0 ? el("th", { scope: "row", rowspan: variants.length }, p.title, el("div", { class: "small muted" }, money(p.price, p.currency), p.status ? ` · ${p.status}` : "")) : null,
        el("td", {}, v ? `${variantLabel(v)} (${v.sku})` : "No variants"),
        el("td", { "data-stock": v?.id }, v ? String(v.stock) : "–"),
        el("td", {}, v ? stockControl(p, v) : "")));
    }));
    if (!products.length) body.append(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "No products yet. Add your first one below.")));
  } catch (err) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, el("p", { class: "status error" }, `Products could not be loaded: ${describeError(err)}`))));
  }
}

async function loadOrders() {
  const list = $("seller-orders");
  try {
    const orders = listOf(await api("/api/v1/seller/orders?limit=50"));
    list.replaceChildren(...orders.map((o) => el("li", {}, el("div", { class: "row spread" },
      el("div", {}, el("strong", {}, money(o.total, o.currency)), " ", el("span", { class: "badge" }, o.status),
        el("div", { class: "small muted" }, `${when(o.createdAt)} · `, (o.items || []).map((i) => `${i.qty}× ${i.title || "item"}`).join(", "))),
      o.status === "paid" ? el("button", { type: "button", class: "small", onclick: () => advance(o, "ship") }, "Mark shipped")
        : o.status === "shipped" ? el("button", { type: "button", class: "small", onclick: () => advance(o, "deliver") }, "Mark delivered") : null))));
    if (!orders.length) list.append(el("li", { class: "empty" }, "No orders yet."));
  } catch (err) {
    list.replaceChildren(el("li", { class: "status error" }, `Orders could not be loaded: ${describeError(err)}`));
  }
}

async function advance(order, action) {
  try {
    await api(`/api/v1/seller/orders/${order.id}/${action}`, { method: "POST" });
    await loadOrders();
  } catch (err) {
    showError(status, err);
  }
}

$("stream-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const st = $("stream-status");
  const title = f.elements.title.value.trim();
  if (!title) { showStatus(st, "Give your livestream a title.", "error"); f.elements.title.focus(); return; }
  const body = { title, description: f.elements.description.value.trim() };
  if (f.elements.scheduledAt.value) body.scheduledAt = new Date(f.elements.scheduledAt.value).toISOString();
  try {
    const s = await api("/api/v1/seller/livestreams", { method: "POST", body });
    st.replaceChildren("Scheduled. ", el("a", { href: `/studio/${s.id}` }, "Open the studio"));
    st.className = "status ok";
    f.reset();
    await loadStreams();
  } catch (err) {
    showError(st, err);
  }
});

$("product-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const st = $("product-status");
  const v = (k) => f.elements[k].value.trim();
  const price = Math.round(parseFloat(v("price").replace(",", ".")) * 100);
  if (!v("title") || !Number.isFinite(price) || price < 0 || !v("sku")) {
    showStatus(st, "Please give a title, a price (like 24.99) and a SKU.", "error");
    return;
  }
  showStatus(st, "Saving…", "loading");
  try {
    const product = await api("/api/v1/seller/products", { method: "POST", body: {
      title: v("title"), description: v("description"), price, currency: v("currency").toUpperCase(), status: "active",
    } });
    const variant = { sku: v("sku"), initialStock: parseInt(v("stock"), 10) || 0 };
    if (v("color")) variant.color = v("color");
    if (v("size")) variant.size = v("size");
    await api(`/api/v1/seller/products/${product.id}/variants`, { method: "POST", body: variant });
    showStatus(st, `${product.title} added.`, "ok");
    f.reset();
    await loadProducts();
  } catch (err) {
    showError(st, err);
  }
});

$("become-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const displayName = f.elements.displayName.value.trim();
  if (!displayName) { showStatus(status, "Give your shop a name.", "error"); f.elements.displayName.focus(); return; }
  try {
    const data = await api("/api/v1/me/seller", { method: "POST", body: { displayName, bio: f.elements.bio.value.trim() } });
    const s = session();
    saveSession({ ...s, accessToken: data.accessToken || s.accessToken, refreshToken: data.refreshToken || s.refreshToken, user: { ...s.user, role: "seller" } });
    location.reload();
  } catch (err) {
    showError(status, err);
  }
});

async function main() {
  if (!currentUser()) { goLogin(); return; }
  showStatus(status, "Loading…", "loading");
  try {
    me = await api("/api/v1/me");
  } catch (err) {
    showError(status, err);
    return;
  }
  showStatus(status, "");
  if (!me.seller) { $("become").hidden = false; return; }
  $("seller").hidden = false;
  await Promise.all([loadAnalytics(), loadStreams(), loadProducts(), loadOrders()]);
}
main();
