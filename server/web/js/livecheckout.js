// Checkout as a bottom sheet over the still-playing show: option and quantity, the
// shipping address, the price breakdown, payment, and one clear success state.
import { api, describeError, el, money, newKey, showStatus } from "./api.js";
import { addressPicker, paymentForm } from "./payment.js";
import { variantLabel } from "./product.js";

// Buy now goes over the live room (DESIGN.md `buy:now`); when the room cannot take it
// (not connected, or a server without in-room buying) the same checkout session comes
// from the HTTP API, with one idempotency key per attempt.
async function reserve(events, livestreamId, { product, variant, qty, addressId }) {
  try {
    const ack = await events.request("buy:now", { productId: product.id, variantId: variant.id, qty, addressId });
    return ack.checkout || ack.session || ack;
  } catch (err) {
    if (err.code && err.code !== "unavailable") throw err;
  }
  return api("/api/v1/checkout/session", {
    method: "POST", headers: { "Idempotency-Key": newKey() },
    body: { addressId, items: [{ productId: product.id, variantId: variant.id, qty }], livestreamId },
  });
}

function line(label, value, attrs = {}) {
  return el("div", { class: "line", ...attrs }, el("dt", {}, label), el("dd", {}, value));
}

/** Open the checkout sheet for one product; resolves once the sheet is shown. */
export async function openCheckout({ dialog, body, product, variant, livestreamId, events, onVariant = () => {}, onPaid = () => {} }) {
  const variants = product.variants || [];
  let chosen = variant || variants.find((v) => v.stock > 0) || variants[0];
  const unit = () => chosen?.price ?? product.price;
  const image = (product.images || [])[0];
  const summary = el("div", { class: "sheet-product" },
    image ? el("img", { src: image, alt: "" }) : el("span", { class: "noimg", "aria-hidden": "true" }, "🛍"),
    el("div", {}, el("strong", {}, product.title), el("p", { class: "small muted", "data-option": true })));
  const step = el("div", { class: "status", role: "status", "aria-live": "polite" });

  const picker = el("select", { id: "sheet-variant", "data-variant-picker": true },
    variants.map((v) => el("option", { value: v.id, disabled: v.stock <= 0 }, `${variantLabel(v)} · ${money(v.price ?? product.price, product.currency)}${v.stock <= 0 ? " (sold out)" : v.stock <= 5 ? ` (only ${v.stock} left)` : ""}`)));
  if (chosen) picker.value = chosen.id;
  const qty = el("input", { id: "sheet-qty", name: "qty", type: "number", min: "1", max: "10", value: "1", inputmode: "numeric" });
  const breakdown = el("dl", { class: "breakdown", "data-breakdown": true });
  const quantity = () => Math.max(1, Math.min(parseInt(qty.max, 10) || 10, parseInt(qty.value, 10) || 1));
  const refresh = () => {
    chosen = variants.find((v) => v.id === picker.value) || chosen;
    summary.querySelector("[data-option]").textContent = [variants.length > 1 && chosen ? variantLabel(chosen) : "", money(unit(), product.currency)].filter(Boolean).join(" · ");
    if (chosen?.stock > 0) qty.max = String(Math.min(10, chosen.stock));
    breakdown.replaceChildren(
      line(`${quantity()} × ${money(unit(), product.currency)}`, money(unit() * quantity(), product.currency)),
      line("Shipping", "Calculated next"),
    );
  };
  picker.addEventListener("change", () => { refresh(); if (chosen) onVariant(chosen); });
  qty.addEventListener("input", refresh);

  const addressBox = el("div");
  const go = el("button", { type: "button", class: "primary wide", "data-continue": true }, "Continue to payment");
  body.replaceChildren(summary,
    el("div", { class: "inline-fields" },
      variants.length > 1 ? el("div", {}, el("label", { for: picker.id }, "Option"), picker) : null,
      el("div", {}, el("label", { for: qty.id }, "Quantity"), qty)),
    addressBox, breakdown, step, go);
  refresh();
  if (!dialog.open) dialog.showModal();
  showStatus(step, "Loading your addresses…", "loading");
  let address;
  try {
    address = await addressPicker(addressBox);
    showStatus(step, "");
  } catch (err) {
    showStatus(step, describeError(err), "error");
    return;
  }

  go.addEventListener("click", async () => {
    let addressId;
    try { addressId = await address.resolve(); } catch { return; }
    go.disabled = true;
    showStatus(step, "Reserving your item…", "loading");
    const n = quantity();
    try {
      const checkout = await reserve(events, livestreamId, { product, variant: chosen, qty: n, addressId });
      const items = unit() * n;
      const extra = (checkout.amount ?? items) - items;
      const pay = el("div");
      body.replaceChildren(summary,
        el("dl", { class: "breakdown", "data-breakdown": true },
          line(`${n} × ${money(unit(), product.currency)}`, money(items, product.currency)),
          line(extra < 0 ? "Discount" : "Shipping", extra === 0 ? "Free" : money(extra, checkout.currency || product.currency)),
          line("Total", money(checkout.amount, checkout.currency), { class: "line total", "data-total": true })),
        pay);
      await paymentForm(pay, checkout, {
        showTotal: false, compact: true,
        onPaid: () => {
          // One success state: the form and its messages give way to the confirmation.
          const done = el("button", { type: "button", class: "primary wide" }, "Keep watching");
          done.addEventListener("click", () => dialog.close());
          body.replaceChildren(el("div", { class: "sheet-done", "data-paid": true, role: "status" },
            el("div", { class: "tick", "aria-hidden": "true" }, "✓"),
            el("h3", {}, "Order placed!"),
            el("p", {}, `${product.title}${variants.length > 1 ? ` (${variantLabel(chosen)})` : ""} × ${n} · ${money(checkout.amount, checkout.currency)} paid`),
            el("p", {}, el("a", { href: "/orders" }, "See your orders")),
            done));
          done.focus();
          onPaid();
        },
      });
    } catch (err) {
      go.disabled = false;
      showStatus(step, err.code === "out_of_stock" ? "Sorry, that just sold out." : describeError(err), "error");
    }
  });
}
