// The highlighted product as a compact card on the video: picture, title, price, the
// stock left (low-stock and sold-out states update live) and a one-tap Buy.
import { el, money } from "./api.js";
import { stockText, variantLabel } from "./product.js";

const LOW_STOCK = 5;

/**
 * Render `product` (the product contract). onBuy({product, variant}) runs on Buy.
 * Returns {node, product, variant(), select(variantId), setStock(variantId, stock)}.
 */
export function liveCard(product, { onBuy }) {
  const variants = product.variants || [];
  let chosen = (variants.find((v) => (v.stock ?? 1) > 0) || variants[0])?.id;
  const current = () => variants.find((v) => v.id === chosen) || variants[0];
  const image = (product.images || [])[0];
  const price = el("span", { class: "price" });
  const option = el("span", { class: "option" });
  const stock = el("span", { class: "stock", "data-stock": "" });
  const buy = el("button", { type: "button", class: "buy", "data-buy": true });
  const total = () => variants.reduce((n, v) => n + Math.max(0, v.stock ?? 0), 0);

  const refresh = () => {
    const v = current();
    const left = v?.stock;
    price.textContent = money(v?.price ?? product.price, product.currency);
    option.textContent = variants.length > 1 && v ? variantLabel(v) : "";
    stock.textContent = stockText(left);
    stock.dataset.stock = left ?? "";
    const soldOut = !v || left <= 0;
    const allGone = variants.length > 0 && total() <= 0;
    stock.className = `stock${soldOut ? " out" : left <= LOW_STOCK ? " low" : ""}`;
    node.dataset.state = allGone ? "sold-out" : soldOut ? "variant-sold-out" : left <= LOW_STOCK ? "low" : "ok";
    // A sold-out option with others left still opens the sheet to pick another one.
    buy.disabled = allGone || !v;
    buy.textContent = allGone ? "Sold out" : "Buy";
    buy.setAttribute("aria-label", allGone ? `${product.title} is sold out` : `Buy ${product.title}`);
  };

  const node = el("article", { class: "live-card", "data-product-id": product.id, "aria-label": `On show: ${product.title}` },
    el("div", { class: "thumb" }, image ? el("img", { src: image, alt: "" }) : el("span", { "aria-hidden": "true" }, "🛍")),
    el("div", { class: "info" },
      el("p", { class: "tag" }, "On show now"),
      el("h3", {}, product.title),
      el("p", { class: "meta" }, price, option, stock)),
    buy);
  buy.addEventListener("click", () => onBuy({ product, variant: current() }));
  refresh();

  return {
    node, product,
    variant: current,
    select(variantId) {
      if (variants.some((v) => v.id === variantId)) { chosen = variantId; refresh(); }
    },
    setStock(variantId, left) {
      const v = variants.find((x) => x.id === variantId);
      if (!v) return;
      const before = v.stock;
      v.stock = left;
      // The shown option sold out: show one that still has stock.
      if (variantId === chosen && left <= 0) chosen = (variants.find((x) => x.stock > 0) || v).id;
      refresh();
      if (before !== left) { stock.classList.remove("tick"); void stock.offsetWidth; stock.classList.add("tick"); }
    },
  };
}
