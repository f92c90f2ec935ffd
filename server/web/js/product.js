// A product card with a variant picker, a live stock counter and buy / add-to-cart
// buttons; used on the home page and (highlighted) on the live page.
import { el, money } from "./api.js";

export const listOf = (data) => (Array.isArray(data) ? data : data?.items || []);

export function variantLabel(v) {
  return [v.color, v.size].filter(Boolean).join(" / ") || v.sku || "Standard";
}

export function stockText(stock) {
  if (stock === undefined || stock === null) return "";
  if (stock <= 0) return "Sold out";
  if (stock <= 5) return `Only ${stock} left`;
  return `${stock} in stock`;
}

let cardSeq = 0;

/**
 * Render `product` (the product contract: id, title, price, currency, images, variants).
 * options: onBuy({product, variant, qty}), onAdd({...}), buyLabel, highlight.
 * Returns {node, setStock(variantId, stock), setBusy(bool)}.
 */
export function productCard(product, { onBuy, onAdd, buyLabel = "Buy now", highlight = false } = {}) {
  const n = ++cardSeq;
  const variants = product.variants || [];
  const stockNode = el("p", { class: "stock", "aria-live": "polite", "data-stock": true });
  const priceNode = el("p", { class: "price" });
  const select = el("select", { id: `variant-${n}`, name: "variant", "data-variant-picker": true });
  const qty = el("input", { id: `qty-${n}`, name: "qty", type: "number", min: "1", max: "10", value: "1", inputmode: "numeric" });
  const buy = onBuy ? el("button", { type: "submit", class: "primary", "data-buy": true }, buyLabel) : null;
  const add = onAdd ? el("button", { type: "button", "data-add": true }, "Add to cart") : null;

  for (const v of variants) {
    const sold = (v.stock ?? 1) <= 0;
    select.append(el("option", { value: v.id, disabled: sold }, `${variantLabel(v)}${sold ? " (sold out)" : ""}`));
  }
  const firstAvailable = variants.find((v) => (v.stock ?? 1) > 0);
  if (firstAvailable) select.value = firstAvailable.id;

  const current = () => variants.find((v) => v.id === select.value) || variants[0];
  const refresh = () => {
    const v = current();
    priceNode.textContent = money(v?.price ?? product.price, product.currency);
    const stock = v?.stock;
    stockNode.textContent = stockText(stock);
    stockNode.dataset.stock = stock ?? "";
    stockNode.className = `stock${stock <= 0 ? " out" : stock <= 5 ? " low" : ""}`;
    const soldOut = !v || stock <= 0;
    if (buy) buy.disabled = soldOut;
    if (add) add.disabled = soldOut;
    if (stock > 0) qty.max = String(Math.min(10, stock));
  };
  select.addEventListener("change", refresh);

  const detail = () => ({ product, variant: current(), qty: Math.max(1, parseInt(qty.value, 10) || 1) });
  const form = el("form", { class: "stack", onsubmit: (e) => { e.preventDefault(); if (onBuy) onBuy(detail()); } },
    variants.length > 1
      ? [el("label", { for: select.id }, "Choose an option"), select]
      : el("p", { class: "small muted" }, variants[0] ? variantLabel(variants[0]) : "No options available"),
    el("div", { class: "row" },
      el("label", { for: qty.id, class: "visually-hidden" }, "Quantity"),
      el("span", { class: "small", "aria-hidden": "true" }, "Qty"), qty),
    el("div", { class: "row" }, buy, add));
  if (add) add.addEventListener("click", () => onAdd(detail()));

  const image = (product.images || [])[0];
  const node = el("article", { class: `card${highlight ? " product-card" : ""}`, "data-product-id": product.id },
    el("div", { class: "thumb" }, image ? el("img", { src: image, alt: "" }) : el("span", { "aria-hidden": "true" }, "No photo")),
    el("h3", {}, product.title),
    product.description ? el("p", { class: "small muted" }, product.description) : null,
    priceNode, stockNode, form);
  refresh();

  return {
    node,
    setStock(variantId, stock) {
      const v = variants.find((x) => x.id === variantId);
      if (!v) return;
      v.stock = stock;
      const option = [...select.options].find((o) => o.value === variantId);
      if (option) {
        option.disabled = stock <= 0;
        option.textContent = `${variantLabel(v)}${stock <= 0 ? " (sold out)" : ""}`;
      }
      refresh();
    },
    setBusy(busy) {
      for (const b of [buy, add]) if (b) b.disabled = busy || (current()?.stock ?? 1) <= 0;
    },
  };
}
