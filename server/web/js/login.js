// Log in and sign up against the auth API; back to `?next=` afterwards.
import { api, currentUser, describeError, renderHeader, saveSession, showStatus } from "./api.js";

renderHeader();
const next = (() => {
  const n = new URLSearchParams(location.search).get("next") || "/";
  return n.startsWith("/") && !n.startsWith("//") ? n : "/"; // never an open redirect
})();

if (currentUser()) {
  showStatus(document.getElementById("login-status"), `You are logged in as ${currentUser().name}.`, "ok");
}

function wire(formId, statusId, path, fields, busyText) {
  const form = document.getElementById(formId);
  const status = document.getElementById(statusId);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = Object.fromEntries(fields.map((f) => [f, form.elements[f].value.trim()]));
    body.password = form.elements.password.value; // passwords are not trimmed
    const empty = fields.find((f) => !body[f]);
    if (empty) {
      showStatus(status, `Please fill in your ${empty === "name" ? "name" : empty}.`, "error");
      form.elements[empty].focus();
      return;
    }
    if (form.elements.password.minLength > 0 && body.password.length < form.elements.password.minLength) {
      showStatus(status, `Your password needs at least ${form.elements.password.minLength} characters.`, "error");
      form.elements.password.focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    showStatus(status, busyText, "loading");
    try {
      saveSession(await api(path, { method: "POST", body, auth: false }));
      showStatus(status, "Welcome! Taking you back…", "ok");
      location.assign(next);
    } catch (err) {
      showStatus(status, err.status === 409 ? "An account with this email already exists. Log in instead."
        : err.status === 401 ? "Wrong email or password." : describeError(err), "error");
      button.disabled = false;
    }
  });
}

wire("login-form", "login-status", "/api/v1/auth/login", ["email", "password"], "Logging in…");
wire("signup-form", "signup-status", "/api/v1/auth/signup", ["name", "email", "password"], "Creating your account…");
