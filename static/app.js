/*
 * app.js: the converter page's own behaviour. htmx sends the form and swaps the answer;
 * this file adds what htmx can't know about, in three parts:
 *
 * 1. hx-ext="wattfare-grant": the htmx twin of the seed's
 *      const result = await wf.requestGrant({ requests, maxUsd });
 *      if (!result) return;  // denied or closed: nothing is sent
 *    Before the form is posted (htmx:confirm) it asks for a grant, unless it holds one
 *    with requests left; then it lets htmx send the form with the token as `grantToken`.
 *    The server reports what the grant has left in an HX-Trigger event, `wattfare:grant`;
 *    at 0 (or after a 402 "grant used up") the token is forgotten and the next
 *    conversion asks again. The token lives in this closure only: never in storage.
 * 2. The file picker: drop a file, see its name and size, and catch a file that is too
 *    large or of the wrong type before anyone is asked to approve anything.
 * 3. Copy buttons: <button data-copy="#selector"> copies that element's text.
 *
 * Configuration arrives through data attributes (templates/index.html); no inline script.
 */
(function () {
  "use strict";

  // ---- 1. the grant extension -----------------------------------------------------------

  let grant = null; // { token, remaining, expiresAt } while it has requests left
  let wattfare = null; // the wattfare.js client, made from the form's data-wattfare-* attributes

  function client(form) {
    if (wattfare === null) {
      wattfare = window.Wattfare.createWattfare({
        publishableKey: form.dataset.wattfarePublishableKey,
        session: form.dataset.wattfareSession,
        baseUrl: form.dataset.wattfareBaseUrl || undefined,
      });
    }
    return wattfare;
  }

  function usable(held) {
    // Leave a few seconds for the upload: a token that expires in flight is a 402.
    return held !== null && held.remaining > 0 && held.expiresAt * 1000 > Date.now() + 10000;
  }

  function approvalFrom(form) {
    const requests = Number.parseInt(form.elements.requests.value, 10) || 1;
    const cap = form.elements.maxUsd.value.trim();
    return { requests, maxUsd: cap === "" ? null : Number(cap) };
  }

  function askForGrantThenSend(event) {
    const form = event.detail.elt;
    say(form, "");
    if (!fileIsConvertible(form)) return false;
    if (usable(grant)) return true; // spend the grant we hold: no popup
    grant = null;

    // requestGrant opens the popup synchronously, inside this click: keep it first.
    let pending;
    try {
      pending = client(form).requestGrant(approvalFrom(form));
    } catch (error) {
      say(form, messageFor(error));
      return false;
    }
    form.setAttribute("aria-busy", "true");
    pending
      .then(
        (result) => {
          if (!result) {
            say(form, "No grant was approved, so nothing was sent.");
            return;
          }
          grant = {
            token: result.grantToken,
            remaining: result.requests,
            expiresAt: result.expiresAt,
          };
          showGrant(form);
          event.detail.issueRequest(true); // now send the form, with the token
        },
        (error) => say(form, messageFor(error)),
      )
      .finally(() => form.removeAttribute("aria-busy"));
    return false; // hold the request until the popup answers
  }

  function messageFor(error) {
    switch (error && error.code) {
      case "popup_blocked":
        return "Your browser blocked the approval popup. Allow popups for this site and try again.";
      case "popup_busy":
        return "The approval popup is already open: answer it there first.";
      case "popup_unreachable":
        return "The approval popup closed before it finished loading, so nothing was sent. Try again.";
      case "timeout":
        return "The approval popup timed out, so nothing was sent. Try again.";
      case "grant_failed":
        return `Wattfare refused the approval, so nothing was sent: ${error.message}`;
      default:
        return `The approval didn't work, so nothing was sent: ${(error && error.message) || error}`;
    }
  }

  function updateGrant(form, balance) {
    if (grant === null) return;
    if (typeof balance.remaining === "number") grant.remaining = balance.remaining;
    if (!usable(grant)) grant = null;
    showGrant(form);
  }

  function showGrant(form) {
    const status = form.querySelector("[data-grant-status]");
    if (!status) return;
    const n = grant === null ? 0 : grant.remaining;
    status.hidden = n === 0;
    status.textContent =
      n === 0
        ? ""
        : `${n} approved ${n === 1 ? "conversion" : "conversions"} left: the next file won't ask again.`;
  }

  htmx.defineExtension("wattfare-grant", {
    onEvent(name, event) {
      const form = event.detail && event.detail.elt;
      switch (name) {
        case "htmx:confirm":
          return askForGrantThenSend(event);
        case "htmx:configRequest":
          if (grant !== null) event.detail.parameters.grantToken = grant.token;
          return true;
        case "htmx:beforeRequest":
          say(form, `Converting ${fileName(form)}…`);
          return true;
        case "htmx:afterRequest":
          if (event.detail.failed && !event.detail.xhr.status) {
            say(form, "The server couldn't be reached. Check your connection and try again.");
          } else {
            say(form, "");
          }
          return true;
        case "wattfare:grant": // HX-Trigger from /api/convert: what the grant has left
          updateGrant(form, event.detail);
          return true;
        default:
          return true;
      }
    },
  });

  // ---- 2. the file picker ----------------------------------------------------------------

  function say(form, text) {
    const notice = form && form.querySelector("[data-notice]");
    if (notice) notice.textContent = text;
  }

  function fileName(form) {
    const file = form.elements.file.files[0];
    return file ? file.name : "your file";
  }

  function formatSize(bytes) {
    if (bytes < 1024) return bytes === 1 ? "1 byte" : `${bytes} bytes`;
    const [value, unit] = bytes < 1024 * 1024 ? [bytes / 1024, "KB"] : [bytes / 1048576, "MB"];
    return `${value.toFixed(1).replace(/\.0$/, "")} ${unit}`;
  }

  function fileIsConvertible(form) {
    const input = form.elements.file;
    if (!form.reportValidity()) return false; // no file chosen, or a cap out of range
    const file = input.files[0];
    const max = Number(input.dataset.maxBytes);
    const extension = file.name.includes(".") ? file.name.slice(file.name.lastIndexOf(".")) : "";
    const accepted = input.accept.split(",");
    let problem = null;
    if (!accepted.includes(extension.toLowerCase())) {
      problem = `${file.name} isn't a file type the converter reads. Choose a ${accepted.join(" ")} file.`;
    } else if (file.size === 0) {
      problem = `${file.name} is empty. Choose a file with some text in it.`;
    } else if (file.size > max) {
      problem = `${file.name} is ${formatSize(file.size)}, over the ${formatSize(max)} limit. Choose a smaller file or split it.`;
    }
    if (problem !== null) {
      say(form, `${problem} Nothing was sent.`);
      return false;
    }
    return true;
  }

  function showFile(zone, input) {
    const info = zone.querySelector("[data-file-info]");
    const file = input.files[0];
    info.hidden = !file;
    info.textContent = file ? `${file.name} · ${formatSize(file.size)}` : "";
    zone.classList.toggle("has-file", Boolean(file));
    say(input.form, "");
  }

  function setUpDropzone(zone) {
    const input = zone.querySelector("input[type=file]");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("is-dragover");
    });
    zone.addEventListener("dragleave", (event) => {
      if (!zone.contains(event.relatedTarget)) zone.classList.remove("is-dragover");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("is-dragover");
      if (event.dataTransfer.files.length > 0) {
        input.files = event.dataTransfer.files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
    });
    input.addEventListener("change", () => showFile(zone, input));
    showFile(zone, input); // a file kept by the browser across a reload
  }

  htmx.onLoad((root) => {
    for (const zone of root.querySelectorAll("[data-dropzone]")) setUpDropzone(zone);
  });

  // ---- 3. copy buttons -------------------------------------------------------------------

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    const label = button.querySelector("[data-copy-label]") || button;
    const original = label.textContent;
    try {
      await navigator.clipboard.writeText(source.textContent);
      label.textContent = "Copied";
    } catch {
      // No clipboard permission: select the text so Ctrl+C / ⌘C copies it.
      getSelection().selectAllChildren(source);
      label.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => {
      label.textContent = original;
    }, 2000);
  });
})();
