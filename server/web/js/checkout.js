// Checkout: shipping address, then a checkout session (stock held) and payment.
import { api, currentUser, describeError, el, goLogin, money, newKey, renderHeader, showError, showStatus } from "./api.js";
import { addressPicker, paymentForm } from "./payment.js";

renderHeader();
const $ = (x) => document.getElementById(x);
const status = $("status");

// One idempotency key per visit: pressing "Continue" twice returns the same session.
const KEY = "shopstream.checkoutKey";
const idempotencyKey = sessionStorage.getItem(KEY) || newKey();
sessionStorage.setItem(KEY, idempotencyKey);

async function main() {
  if (!currentUser()) { goLogin(); return; }
  let cart;
  try {
    cart = await api("/api/v1/me/cart");
  } catch (err) { showError(status, err); return; }
  const items = cart.items || [];
  if (!items.length) {
    status.replaceChildren("Your cart is empty. ", el("a", { href: "/" }, "Find something to buy"));
    status.className = "status";
    return;
  }
  showStatus(status, "");
  $("summary").hidden = false;
  $("items").replaceChildren(...items.map((i) => el("li", {}, `${i.qty}× ${i.title || i.product?.title || "Item"}`)));
  $("total").replaceChildren("Total: ", el("strong", {}, money(cart.total, cart.currency)));
  $("address-step").hidden = false;
  let picker;
  try { picker = await addressPicker($("address")); } catch (err) { showError(status, err); return; }
  const go = $("continue");
  go.addEventListener("click", async () => {
    let addressId;
    try { addressId = await picker.resolve(); } catch { return; }
    go.disabled = true;
    showStatus(status, "Reserving your items…", "loading");
    try {
      const checkout = await api("/api/v1/checkout/session", { method: "POST", body: { addressId }, headers: { "Idempotency-Key": idempotencyKey } });
      showStatus(status, "");
      $("payment-step").hidden = false;
      await paymentForm($("payment"), checkout, {
        onPaid: () => {
          sessionStorage.removeItem(KEY);
          status.replaceChildren("Payment received. ", el("a", { href: "/orders" }, "See your orders"));
          status.className = "status ok";
          setTimeout(() => location.assign("/orders"), 1500);
        },
      });
      $("payment").querySelector("input")?.focus();
    } catch (err) {
      go.disabled = false;
      showStatus(status, err.code === "out_of_stock" ? `Sorry, something in your cart sold out: ${err.message}` : describeError(err), "error");
    }
  });
}
main();
