// The HTTP API client shared by every page: the session in localStorage, a fetch
// wrapper that adds the bearer token and rotates the refresh token once on a 401,
// the error JSON as an ApiError, and small DOM helpers (text only, never innerHTML).

const SESSION_KEY = "shopstream.session";

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function session() {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY)) || null;
  } catch {
    return null;
  }
}

export function saveSession(data) {
  localStorage.setItem(SESSION_KEY, JSON.stringify({
    accessToken: data.accessToken, refreshToken: data.refreshToken, user: data.user,
  }));
  window.dispatchEvent(new CustomEvent("session-changed"));
}

export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
  window.dispatchEvent(new CustomEvent("session-changed"));
}

export const currentUser = () => session()?.user || null;
export const accessToken = () => session()?.accessToken || null;

let refreshing = null; // one refresh at a time: concurrent 401s wait for the same rotation

async function refreshTokens() {
  const s = session();
  if (!s?.refreshToken) return false;
  if (!refreshing) {
    refreshing = (async () => {
      const resp = await fetch("/api/v1/auth/refresh", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refreshToken: s.refreshToken }),
      });
      if (!resp.ok) { clearSession(); return false; }
      saveSession(await resp.json());
      return true;
    })().catch(() => false).finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** Return a fresh access token (refreshing it when the API refuses the current one). */
export async function freshAccessToken() {
  const ok = await api("/api/v1/me").then(() => true, () => false);
  return ok ? accessToken() : null;
}

/**
 * Call the API and return the parsed JSON (null for 204).
 * Options: method, body (JSON), headers, auth (default true: send the token if any).
 */
export async function api(path, { method = "GET", body, headers = {}, auth = true, retry = true } = {}) {
  const h = { Accept: "application/json", ...headers };
  if (body !== undefined) h["Content-Type"] = "application/json";
  const token = auth ? accessToken() : null;
  if (token) h.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "network_error", "Cannot reach the server. Check your connection and try again.");
  }
  if (resp.status === 401 && token && retry && await refreshTokens()) {
    return api(path, { method, body, headers, auth, retry: false });
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const e = data?.error;
    if (e) throw new ApiError(resp.status, e.code, e.message, e.details || {});
    throw new ApiError(resp.status, "http_error", `The server answered ${resp.status}.`);
  }
  return data;
}

/** Return a readable sentence for an error (field details included). */
export function describeError(err) {
  if (!(err instanceof ApiError)) return err?.message || String(err);
  if (err.status === 401) return "Please log in to continue.";
  if (err.status === 429) return "Too many attempts. Please wait a moment and try again.";
  const fields = err.details?.fields;
  if (fields && Object.keys(fields).length && !Object.keys(fields).every((f) => err.message.includes(f))) {
    return `${err.message} (${Object.entries(fields).map(([k, v]) => `${k}: ${v}`).join("; ")})`;
  }
  return err.message;
}

/** Show a message in a status element; kind is "", "loading", "error", "ok" or "warn". */
export function showStatus(node, message, kind = "") {
  if (!node) return;
  node.className = `status ${kind}`.trim();
  if (kind === "loading") node.classList.add("loading");
  node.textContent = message || "";
}

export function showError(node, err) {
  showStatus(node, describeError(err), "error");
}

/** Build an element: el("a", {href: "/", class: "x"}, "text", child...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function money(amount, currency = "USD") {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format((amount || 0) / 100);
  } catch {
    return `${((amount || 0) / 100).toFixed(2)} ${currency}`;
  }
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/** Send the visitor to the login page and back here afterwards. */
export function goLogin() {
  location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
}

/** Fill the header's account links from the session (every page calls this). */
export function renderHeader() {
  const nav = document.querySelector("[data-account]");
  if (!nav) return;
  const user = currentUser();
  nav.replaceChildren();
  if (user) {
    if (user.role === "seller" || user.role === "admin") nav.append(el("a", { href: "/dashboard" }, "Seller dashboard"));
    else nav.append(el("a", { href: "/dashboard" }, "Sell"));
    nav.append(
      el("span", { class: "small", "data-username": true }, user.name),
      el("button", {
        type: "button", class: "linklike",
        onclick: async () => {
          const s = session();
          if (s?.refreshToken) await api("/api/v1/auth/logout", { method: "POST", body: { refreshToken: s.refreshToken }, auth: false }).catch(() => {});
          clearSession();
          location.assign("/");
        },
      }, "Log out"),
    );
  } else {
    nav.append(el("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, "Log in / Sign up"));
  }
  for (const a of document.querySelectorAll(".topbar a")) {
    if (a.getAttribute("href") === location.pathname) a.setAttribute("aria-current", "page");
  }
}

window.addEventListener("session-changed", renderHeader);
window.addEventListener("storage", (e) => { if (e.key === SESSION_KEY) renderHeader(); });
