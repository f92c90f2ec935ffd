// The cart: quantities, removal, coupon, totals.
import { api, currentUser, el, goLogin, money, renderHeader, showError, showStatus } from "./api.js";

renderHeader();
const $ = (x) => document.getElementById(x);
const status = $("status");

function itemTitle(i) {
  const variant = [i.variant?.color ?? i.color, i.variant?.size ?? i.size].filter(Boolean).join(" / ");
  return [i.title || i.product?.title || "Item", variant].filter(Boolean).join(" — ");
}

function render(cart) {
  const currency = cart.currency || "USD";
  const items = cart.items || [];
  $("cart").hidden = false;
  if (!items.length) {
    showStatus(status, "Your cart is empty. Find something in a live stream or on the home page.", "");
    $("cart").hidden = true;
    return;
  }
  showStatus(status, "");
  $("items").replaceChildren(...items.map((i) => {
    const qty = el("input", { type: "number", min: "1", max: "99", value: String(i.qty), "aria-label": `Quantity of ${itemTitle(i)}` });
    qty.addEventListener("change", () => update(i, parseInt(qty.value, 10)));
    return el("li", { "data-item-id": i.id }, el("div", { class: "row spread" },
      el("div", {}, el("strong", {}, itemTitle(i)), el("div", { class: "small muted" }, `${money(i.priceAtAdd ?? i.price, currency)} each`)),
      el("div", { class: "row" }, qty,
        el("button", { type: "button", class: "small", "aria-label": `Remove ${itemTitle(i)}`, onclick: () => remove(i) }, "Remove"))));
  }));
  const totals = $("totals");
  // replaceChildren would print a null as the text "null": only real pairs go in.
  const rows = [el("dt", {}, "Subtotal"), el("dd", {}, money(cart.subtotal, currency))];
  if (cart.discount) {
    rows.push(el("dt", {}, `Discount${cart.coupon?.code ? ` (${cart.coupon.code})` : ""}`), el("dd", {}, `− ${money(cart.discount, currency)}`));
  }
  rows.push(el("dt", {}, el("strong", {}, "Total")), el("dd", {}, el("strong", { "data-total": true }, money(cart.total, currency))));
  if (cart.coupon?.code) {
    // A dd belongs to a dt: the coupon's own row carries its remove button.
    rows.push(el("dt", {}, `Coupon ${cart.coupon.code}`), el("dd", {}, el("button", { type: "button", class: "small", onclick: removeCoupon }, "Remove coupon")));
  }
  totals.replaceChildren(...rows);
}

async function call(path, options, busy) {
  showStatus(status, busy, "loading");
  try {
    const cart = await api(path, options);
    render(cart?.items ? cart : await api("/api/v1/me/cart"));
  } catch (err) {
    showError(status, err);
  }
}

const update = (i, qty) => (qty > 0 ? call(`/api/v1/me/cart/items/${i.id}`, { method: "PATCH", body: { qty } }, "Updating…") : remove(i));
const remove = (i) => call(`/api/v1/me/cart/items/${i.id}`, { method: "DELETE" }, "Removing…");
const removeCoupon = () => call("/api/v1/me/cart/coupon", { method: "DELETE" }, "Removing the coupon…");

$("coupon-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const code = $("coupon").value.trim();
  if (code) call("/api/v1/me/cart/apply-coupon", { method: "POST", body: { code } }, "Applying the coupon…");
});

if (!currentUser()) goLogin();
else call("/api/v1/me/cart", {}, "Loading your cart…");
