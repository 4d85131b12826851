// passgate portal: the pages work without this script. It copies secrets
// to the clipboard and runs the WebAuthn ceremonies (which need script).
"use strict";

function showError(msg) {
  const a = document.getElementById("alert");
  if (a) { a.textContent = msg; a.hidden = false; }
}

async function post(url, body, json) {
  const res = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": json ? "application/json" : "application/x-www-form-urlencoded" },
    body: body,
  });
  return res.json();
}

function finish(result) {
  if (!result.error) {
    if (result.redirect) { location.assign(result.redirect); }
    return;
  }
  showError(result.error);
  if (result.redirect) { setTimeout(() => location.assign(result.redirect), 3000); }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("[data-copy]")) {
    b.addEventListener("click", async () => {
      const el = document.getElementById(b.dataset.copy);
      const status = document.getElementById("copy-status");
      try {
        await navigator.clipboard.writeText(el.textContent.trim());
        if (status) { status.textContent = "Copied"; }
      } catch (e) {
        if (status) { status.textContent = "Select the text and copy it yourself"; }
      }
    });
  }

  const reg = document.querySelector("[data-passkey-register]");
  if (reg) {
    reg.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const opts = await post("/add/passkey/begin", new URLSearchParams(new FormData(reg)), false);
        if (!opts.publicKey) { return finish(opts); }
        const cred = await navigator.credentials.create({
          publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(opts.publicKey),
        });
        finish(await post("/add/passkey/finish", JSON.stringify(cred.toJSON()), true));
      } catch (e) {
        showError("The passkey was not registered: " + e.message);
      }
    });
  }

  const login = document.querySelector("[data-passkey-login]");
  if (login) {
    login.addEventListener("click", async () => {
      try {
        const opts = await post("/signin/passkey/begin", "", false);
        if (!opts.publicKey) { return finish(opts); }
        const cred = await navigator.credentials.get({
          publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(opts.publicKey),
        });
        finish(await post("/signin/passkey/finish", JSON.stringify(cred.toJSON()), true));
      } catch (e) {
        showError("The passkey did not sign you in: " + e.message);
      }
    });
  }
});
