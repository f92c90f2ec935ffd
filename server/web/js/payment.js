// Shipping address choice and payment for a checkout session, shared by the checkout
// page and the live page's "Buy now" dialog.
//
// Offline provider: a card form; the server checks the card against the test numbers.
// Stripe provider: Stripe's Payment Element. Stripe serves Stripe.js only from its own
// host, so this is the one script a page may load from elsewhere, and only when the
// operator has configured Stripe (the server's CSP allows it only then).
import { api, describeError, el, money, showError, showStatus } from "./api.js";
import { listOf } from "./product.js";

let configPromise = null;
export function clientConfig() {
  configPromise ||= api("/api/v1/config", { auth: false }).catch((err) => { configPromise = null; throw err; });
  return configPromise;
}

let seq = 0;

/** Render an address chooser into `container`; returns {resolve(): Promise<addressId>}. */
export async function addressPicker(container) {
  const n = ++seq;
  const addresses = listOf(await api("/api/v1/me/addresses"));
  const status = el("div", { class: "status", role: "status" });
  const select = el("select", { id: `addr-${n}` },
    addresses.map((a) => el("option", { value: a.id }, [a.line1, a.city, a.postalCode, a.country].filter(Boolean).join(", "))),
    el("option", { value: "new" }, "Add a new address…"));
  const field = (name, label, attrs = {}) => [
    el("label", { for: `${name}-${n}` }, label),
    el("input", { id: `${name}-${n}`, name, autocomplete: attrs.autocomplete, required: attrs.required, maxlength: attrs.maxlength, placeholder: attrs.placeholder }),
  ];
  const form = el("fieldset", { "data-new-address": true },
    el("legend", {}, "New shipping address"),
    field("line1", "Street and number", { autocomplete: "address-line1", required: true }),
    field("city", "City", { autocomplete: "address-level2", required: true }),
    el("div", { class: "inline-fields" },
      el("div", {}, field("postalCode", "Postal code", { autocomplete: "postal-code", required: true, maxlength: 20 })),
      el("div", {}, field("country", "Country code", { autocomplete: "country", required: true, maxlength: 2, placeholder: "US" }))));
  const showForm = () => { form.hidden = select.value !== "new"; };
  select.addEventListener("change", showForm);
  if (!addresses.length) select.value = "new";
  container.replaceChildren(
    el("label", { for: select.id }, "Ship to"), select, form, status);
  showForm();
  return {
    async resolve() {
      if (select.value !== "new") return select.value;
      const value = (name) => form.querySelector(`[name=${name}]`).value.trim();
      const body = { line1: value("line1"), city: value("city"), postalCode: value("postalCode"), country: value("country").toUpperCase() };
      const missing = Object.entries(body).filter(([, v]) => !v).map(([k]) => k);
      if (missing.length) {
        showStatus(status, "Please fill in the street, city, postal code and a two-letter country code.", "error");
        form.querySelector(`[name=${missing[0]}]`).focus();
        throw new Error("address incomplete");
      }
      try {
        const created = await api("/api/v1/me/addresses", { method: "POST", body });
        showStatus(status, "");
        return created.id;
      } catch (err) {
        showError(status, err);
        throw err;
      }
    },
  };
}

function loadStripeJs() {
  if (window.Stripe) return Promise.resolve(window.Stripe);
  return new Promise((resolve, reject) => {
    const script = el("script", { src: "https://js.stripe.com/v3/" });
    script.onload = () => resolve(window.Stripe);
    script.onerror = () => reject(new Error("Stripe could not be loaded. Check your connection."));
    document.head.append(script);
  });
}

/**
 * Render the payment step for a checkout session ({paymentIntentId, clientSecret,
 * amount, currency, expiresAt}) into `container`; onPaid() runs after success.
 */
export async function paymentForm(container, checkout, { onPaid, showTotal = true, compact = false }) {
  const n = ++seq;
  const config = await clientConfig();
  const status = el("div", { class: "status", role: "status", "aria-live": "polite" });
  // The live sheet shows its own price breakdown (with the total) above the form.
  const total = showTotal ? el("p", {}, "Total: ", el("strong", { "data-total": true }, money(checkout.amount, checkout.currency))) : null;
  const expiry = checkout.expiresAt ? el("p", { class: "hint" }, `Your items are reserved until ${new Date(checkout.expiresAt).toLocaleTimeString()}.`) : null;

  if (config.paymentProvider === "stripe" && !config.stripePublishableKey) {
    container.replaceChildren(el("p", { class: "status error" }, "Card payments are not set up on this shop yet (missing Stripe publishable key). Please contact the seller."));
    return;
  }
  if (config.paymentProvider === "stripe") {
    const mount = el("div", { id: `stripe-${n}` });
    const pay = el("button", { type: "submit", class: "primary" }, `Pay ${money(checkout.amount, checkout.currency)}`);
    const form = el("form", { class: "stack" }, total, expiry, mount, pay, status);
    container.replaceChildren(form);
    showStatus(status, "Loading the secure payment form…", "loading");
    const Stripe = await loadStripeJs();
    const stripe = Stripe(config.stripePublishableKey);
    const elements = stripe.elements({ clientSecret: checkout.clientSecret });
    elements.create("payment").mount(mount);
    showStatus(status, "");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      pay.disabled = true;
      showStatus(status, "Processing payment…", "loading");
      const { error } = await stripe.confirmPayment({
        elements, redirect: "if_required", confirmParams: { return_url: `${location.origin}/orders` },
      });
      if (error) { showStatus(status, error.message, "error"); pay.disabled = false; return; }
      showStatus(status, "Payment received. Thank you!", "ok");
      onPaid?.();
    });
    return;
  }

  const input = (name, label, attrs) => [
    el("label", { for: `${name}-${n}` }, label),
    el("input", { id: `${name}-${n}`, name, required: true, ...attrs }),
  ];
  const cardList = [
    el("ul", {}, (config.testCards || []).map((c) => el("li", {}, el("code", {}, c.number), ` ${c.outcome}`))),
    el("p", { class: "small" }, "Use any future expiry date and any 3 digits as CVC."),
  ];
  // In the live sheet the list folds away: the show stays visible above the form.
  const cards = compact
    ? el("details", { class: "testcards" }, el("summary", {}, "Test payments only: no real money moves. Test cards"), cardList)
    : el("div", { class: "testcards" },
      el("p", {}, "This shop uses the offline test payment provider. No real money moves. Test cards:"), cardList);
  const pay = el("button", { type: "submit", class: "primary", "data-pay": true }, `Pay ${money(checkout.amount, checkout.currency)}`);
  const form = el("form", { class: "stack", novalidate: true },
    total, expiry, cards,
    input("cardNumber", "Card number", { inputmode: "numeric", autocomplete: "cc-number", placeholder: "4242 4242 4242 4242", maxlength: 23 }),
    el("div", { class: "inline-fields" },
      el("div", {}, input("exp", "Expiry (MM/YY)", { inputmode: "numeric", autocomplete: "cc-exp", placeholder: "12/30", maxlength: 7 })),
      el("div", {}, input("cvc", "CVC", { inputmode: "numeric", autocomplete: "cc-csc", placeholder: "123", maxlength: 4 }))),
    pay, status);
  container.replaceChildren(form);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = (name) => form.querySelector(`[name=${name}]`).value.trim();
    const cardNumber = value("cardNumber").replace(/[\s-]/g, "");
    const m = value("exp").match(/^(\d{1,2})\s*\/\s*(\d{2}|\d{4})$/);
    const cvc = value("cvc");
    if (!/^\d{12,19}$/.test(cardNumber)) { showStatus(status, "Enter the card number (digits only).", "error"); form.querySelector("[name=cardNumber]").focus(); return; }
    if (!m) { showStatus(status, "Enter the expiry as MM/YY, for example 12/30.", "error"); form.querySelector("[name=exp]").focus(); return; }
    if (!/^\d{3,4}$/.test(cvc)) { showStatus(status, "Enter the 3 or 4 digit CVC.", "error"); form.querySelector("[name=cvc]").focus(); return; }
    const expMonth = parseInt(m[1], 10);
    const expYear = m[2].length === 2 ? 2000 + parseInt(m[2], 10) : parseInt(m[2], 10);
    pay.disabled = true;
    showStatus(status, "Processing payment…", "loading");
    try {
      await api(`/api/v1/payments/${encodeURIComponent(checkout.paymentIntentId)}/confirm`, {
        method: "POST", body: { cardNumber, expMonth, expYear, cvc },
      });
      showStatus(status, "Payment received. Thank you!", "ok");
      form.querySelectorAll("input").forEach((i) => { i.disabled = true; });
      onPaid?.();
    } catch (err) {
      showStatus(status, `Payment failed: ${describeError(err)}`, "error");
      pay.disabled = false;
    }
  });
}
