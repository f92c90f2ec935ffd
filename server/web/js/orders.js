// My orders, newest first, with cancel for orders not yet paid.
import { api, currentUser, el, goLogin, money, renderHeader, showError, showStatus, when } from "./api.js";
import { listOf } from "./product.js";

renderHeader();
const $ = (x) => document.getElementById(x);
const status = $("status");
const list = $("orders");
let cursor = null;

const STATUS_TEXT = {
  created: ["Awaiting payment", "warn"], paid: ["Paid", "ok"], shipped: ["Shipped", "ok"], delivered: ["Delivered", "ok"],
  canceled: ["Canceled", ""], cancelled: ["Canceled", ""], refunded: ["Refunded", ""], expired: ["Expired", ""],
};

function orderItem(o) {
  const [text, kind] = STATUS_TEXT[o.status] || [o.status, ""];
  const items = (o.items || []).map((i) => `${i.qty}× ${i.title || i.productTitle || "item"}`).join(", ");
  return el("li", { "data-order-id": o.id, "data-status": o.status }, el("div", { class: "row spread" },
    el("div", {},
      el("strong", {}, money(o.total, o.currency)), " ", el("span", { class: `badge ${kind}` }, text),
      el("div", { class: "small muted" }, [when(o.createdAt), items].filter(Boolean).join(" · ")),
      el("div", { class: "small muted" }, `Order ${String(o.id).slice(0, 8)}`)),
    o.status === "created" ? el("button", { type: "button", class: "small", onclick: () => cancel(o) }, "Cancel") : null));
}

async function cancel(o) {
  try {
    await api(`/api/v1/me/orders/${o.id}/cancel`, { method: "POST" });
    list.replaceChildren();
    cursor = null;
    await load();
  } catch (err) {
    showError(status, err);
  }
}

async function load() {
  showStatus(status, "Loading your orders…", "loading");
  try {
    const q = new URLSearchParams({ limit: "20" });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/api/v1/me/orders?${q}`);
    const orders = listOf(page);
    list.append(...orders.map(orderItem));
    cursor = page?.nextCursor || null;
    $("more").hidden = !cursor;
    showStatus(status, list.children.length ? "" : "You have no orders yet.");
  } catch (err) {
    showError(status, err);
  }
}

$("more").addEventListener("click", load);
if (!currentUser()) goLogin();
else load();
