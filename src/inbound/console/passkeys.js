// Passkeys on the console's pages. A form marked `data-passkey="create"` or `"get"` asks the
// console for WebAuthn options (POSTing its own fields, CSRF token included, to its
// `data-options`), lets the browser make or use a passkey, puts the answer into its
// `credential` field and is then sent like any other form: the server renders what follows.
//
// Without this script, or in a browser without WebAuthn's JSON helpers, the elements marked
// `data-needs-passkeys` stay hidden and those marked `data-without-passkeys` stay shown.
"use strict";

(() => {
  const Credential = window.PublicKeyCredential;
  if (
    typeof Credential?.parseCreationOptionsFromJSON !== "function" ||
    typeof Credential?.parseRequestOptionsFromJSON !== "function"
  ) {
    return;
  }

  const ceremonies = {
    create: (options) =>
      navigator.credentials.create({
        publicKey: Credential.parseCreationOptionsFromJSON(options.publicKey),
      }),
    get: (options) =>
      navigator.credentials.get({
        publicKey: Credential.parseRequestOptionsFromJSON(options.publicKey),
      }),
  };

  // The browser's refusals, in the console's words (its own messages are for developers).
  const refusals = {
    NotAllowedError: "No passkey was used: it was cancelled, or it took too long. Try again.",
    InvalidStateError: "This device already holds a passkey of your account.",
  };
  const unexpected = "Something went wrong. Reload the page and try again.";

  // A failure the server put into words.
  class Refused extends Error {}

  async function optionsFor(form) {
    const response = await fetch(form.dataset.options, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "application/json" },
      // A redirect means the session ended: no options, and the page says to reload.
      redirect: "error",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Refused(body.message || unexpected);
    }
    return body;
  }

  function enhance(form) {
    const problem = form.querySelector("[data-passkey-problem]");
    const button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      problem.hidden = true;
      try {
        const options = await optionsFor(form);
        const credential = await ceremonies[form.dataset.passkey](options);
        form.elements.credential.value = JSON.stringify(credential.toJSON());
        // A password asked for the options has done its work: it does not travel again.
        form.querySelectorAll("input[type=password]").forEach((input) => {
          input.value = "";
        });
        form.submit();
      } catch (error) {
        problem.textContent =
          error instanceof Refused ? error.message : refusals[error.name] || unexpected;
        problem.hidden = false;
        button.disabled = false;
      }
    });
    // Back from the page the form led to, the browser may show this one as it was left.
    window.addEventListener("pageshow", () => {
      button.disabled = false;
    });
  }

  document.querySelectorAll("form[data-passkey]").forEach(enhance);
  document.querySelectorAll("[data-needs-passkeys]").forEach((element) => {
    element.hidden = false;
  });
  document.querySelectorAll("[data-without-passkeys]").forEach((element) => {
    element.hidden = true;
  });
})();
