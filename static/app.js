/*
 * app.js: the converter page's own behaviour. htmx does the requests and the swaps; this
 * file adds what htmx can't know about, in four parts:
 *
 * 1. The plan. Choosing a file makes htmx POST it to /api/convert/plan (the file input's
 *    hx-post); the answer in #plan says "This file needs N AI requests" and carries N in
 *    data-requests. A file that is too large or of the wrong type is caught here first,
 *    before anything is sent (htmx:confirm).
 * 2. The grant: the htmx twin of the seed's
 *      const result = await wf.requestGrant({ requests, maxUsd });
 *      if (!result) return;  // denied or closed: nothing is sent
 *    Convert with AI asks for N requests (plus the extra ones chosen) on the converter's
 *    model, unless the page holds a grant with N left. The token lives in this closure
 *    only, never in storage; it is forgotten when the server says the grant has 0 left
 *    (data-grant-balance), or when the visitor stops it ("Stop using my grant", which
 *    POSTs it to the demo's /api/grant/revoke). The grant's receipt link (on the engine's
 *    origin) is shown beside what is left.
 * 3. The stream. The conversion card (#conversion-template) uses the htmx SSE extension
 *    with `sse-connect` on /api/convert. EventSource can only GET, and the upload is a
 *    POST, so `htmx.createEventSource` (the extension's hook) is replaced by
 *    PostedEventSource: it POSTs the form with fetch and parses the server-sent events
 *    of the response. Nothing is stored between requests; the parts are swapped in by
 *    the extension as they arrive.
 * 4. Copy buttons: <button data-copy="#selector"> copies that element's text.
 *
 * Configuration arrives through data attributes (templates/index.html); no inline script.
 */
(function () {
  "use strict";

  // ---- 1. the plan ------------------------------------------------------------------------

  function say(form, text) {
    const notice = form && form.querySelector("[data-notice]");
    if (notice) notice.textContent = text;
  }

  function formatSize(bytes) {
    if (bytes < 1024) return bytes === 1 ? "1 byte" : `${bytes} bytes`;
    const [value, unit] = bytes < 1024 * 1024 ? [bytes / 1024, "KB"] : [bytes / 1048576, "MB"];
    return `${value.toFixed(1).replace(/\.0$/, "")} ${unit}`;
  }

  function fileProblem(input) {
    const file = input.files[0];
    if (!file) return "Choose a file to convert.";
    const max = Number(input.dataset.maxBytes);
    const extension = file.name.includes(".") ? file.name.slice(file.name.lastIndexOf(".")) : "";
    const accepted = input.accept.split(",");
    if (!accepted.includes(extension.toLowerCase())) {
      return `${file.name} isn't a file type the converter reads. Choose a ${accepted.join(" ")} file.`;
    }
    if (file.size === 0) return `${file.name} is empty. Choose a file with some text in it.`;
    if (file.size > max) {
      return `${file.name} is ${formatSize(file.size)}, over the ${formatSize(max)} limit. Choose a smaller file or split it.`;
    }
    return null;
  }

  function planned(form) {
    // What /api/convert/plan said about the chosen file: { requests } or { error }.
    const plan = form.querySelector("#plan [data-plan]");
    if (!plan) return null;
    if (plan.dataset.planError) return { error: plan.textContent.trim() };
    return { requests: Number.parseInt(plan.dataset.requests, 10) };
  }

  document.addEventListener("htmx:confirm", (event) => {
    const input = event.detail.elt;
    if (input.id !== "file") return;
    const form = input.form;
    form.querySelector("#plan").textContent = "";
    const problem = fileProblem(input);
    if (problem !== null) {
      event.preventDefault(); // no plan request for a file we already know is wrong
      say(form, `${problem} Nothing was sent.`);
      return;
    }
    say(form, "");
    form.querySelector("#plan").textContent = "Counting the AI requests this file needs…";
  });

  document.addEventListener("htmx:afterRequest", (event) => {
    const input = event.detail.elt;
    if (input.id !== "file" || event.detail.xhr.status) return;
    // The plan request never got an answer (offline, server down): say so, not "Counting…".
    const line = document.createElement("p");
    line.className = "plan__line plan__line--error";
    line.dataset.plan = "";
    line.dataset.planError = "unreachable";
    line.textContent =
      "The server couldn't be reached to read this file. Check your connection and choose it again.";
    input.form.querySelector("#plan").replaceChildren(line);
  });

  // ---- 2. the grant -----------------------------------------------------------------------

  let grant = null; // { token, remaining, expiresAt, receiptUrl } while it has requests left
  let lastReceipt = null; // the receipt of the latest grant, kept after it is used up
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

  function usable(held, needed) {
    // Leave a few seconds for the upload: a token that expires in flight is a 402.
    return (
      held !== null && held.remaining >= needed && held.expiresAt * 1000 > Date.now() + 10000
    );
  }

  function approvalFor(form, needed) {
    const max = Number.parseInt(form.dataset.maxRequests, 10) || needed;
    const extra = Number.parseInt(form.elements.extra.value, 10) || 0;
    const cap = form.elements.maxUsd.value.trim();
    return {
      requests: Math.min(needed + extra, Math.max(max, needed)),
      maxUsd: cap === "" ? null : Number(cap),
      model: form.dataset.wattfareModel || null, // the popup names it and quotes for it
    };
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

  function showGrant(form) {
    const status = form.querySelector("[data-grant-status]");
    if (!status) return;
    const n = grant === null ? 0 : grant.remaining;
    status.hidden = n === 0;
    status.querySelector("[data-grant-text]").textContent =
      n === 0
        ? ""
        : `${n} approved ${n === 1 ? "request" : "requests"} left: the next file won't ask again if that is enough.`;
    setReceiptLink(status.querySelector("[data-receipt-link]"), n === 0 ? null : grant.receiptUrl);
  }

  function setReceiptLink(link, url) {
    if (!link) return;
    link.hidden = !url;
    if (url) link.href = url;
    else link.removeAttribute("href");
  }

  // "Stop using my grant": the demo's own route revokes it with the SDK (the page never
  // holds the secret key). A conversion running on it stops within a second.
  async function stopGrant(form) {
    if (grant === null) return;
    const token = grant.token;
    const button = form.querySelector("[data-stop-grant]");
    button.disabled = true;
    try {
      const response = await fetch(form.dataset.revokeUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify({ grantToken: token }),
      });
      const body = await response.json().catch(() => null);
      if (!response.ok && !(body && body.error === "grant_used")) {
        say(form, `The grant couldn't be stopped: ${(body && body.message) || response.status}`);
        return;
      }
      if (grant !== null && grant.token === token) grant = null;
      showGrant(form);
      say(form, "Stopped: your grant is revoked, and nothing more can be spent with it.");
    } catch {
      say(form, "The server couldn't be reached, so the grant wasn't stopped. Try again.");
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-stop-grant]");
    if (button) stopGrant(button.form || document.getElementById("convert-form"));
  });

  function onSubmit(event) {
    const form = event.target;
    if (form.id !== "convert-form") return;
    event.preventDefault();
    say(form, "");
    if (!form.reportValidity()) return; // no file chosen, or a cap out of range
    const problem = fileProblem(form.elements.file);
    if (problem !== null) {
      say(form, `${problem} Nothing was sent.`);
      return;
    }
    const plan = planned(form);
    if (plan === null) {
      say(form, "Still counting the AI requests this file needs: try again in a moment.");
      return;
    }
    if (plan.error) {
      say(form, `${plan.error} Nothing was sent.`);
      return;
    }
    if (usable(grant, plan.requests)) {
      startConversion(form); // spend the grant we hold: no popup
      return;
    }
    grant = null;
    showGrant(form);

    // requestGrant opens the popup synchronously, inside this click: keep it first.
    let pending;
    try {
      pending = client(form).requestGrant(approvalFor(form, plan.requests));
    } catch (error) {
      say(form, messageFor(error));
      return;
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
            receiptUrl: result.receiptUrl || null,
          };
          lastReceipt = grant.receiptUrl;
          showGrant(form);
          startConversion(form);
        },
        (error) => say(form, messageFor(error)),
      )
      .finally(() => form.removeAttribute("aria-busy"));
  }

  document.addEventListener("submit", onSubmit);

  function updateGrant(balance, root) {
    // The receipt next to "N requests remaining" in the conversion's footer.
    const badge = root.querySelector ? root.querySelector("[data-remaining]") : null;
    if (badge && lastReceipt && !badge.parentElement.querySelector("[data-receipt-link]")) {
      const link = document.createElement("a");
      link.className = "badge badge--link";
      link.dataset.receiptLink = "";
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = "Receipt";
      setReceiptLink(link, lastReceipt);
      badge.after(link);
    }
    const form = document.getElementById("convert-form");
    if (grant !== null && balance.grantRemaining !== "") {
      grant.remaining = Number.parseInt(balance.grantRemaining, 10) || 0;
      if (grant.remaining <= 0) grant = null;
    }
    if (form) showGrant(form);
  }

  // ---- 3. the stream ----------------------------------------------------------------------

  let pendingUpload = null; // the form data the next PostedEventSource sends

  function startConversion(form) {
    const body = new FormData(form);
    body.set("grantToken", grant.token);
    body.delete("extra");
    body.delete("maxUsd");
    const card = document.getElementById("conversion-template").content.cloneNode(true);
    const result = document.getElementById("result");
    say(form, `Converting ${form.elements.file.files[0].name}…`);
    form.querySelector("#convert-button").disabled = true;
    pendingUpload = body;
    result.replaceChildren(card);
    htmx.process(result); // the extension's sse-connect now calls htmx.createEventSource
    pendingUpload = null;
  }

  const LOST =
    '<p class="callout callout--danger" role="alert">The connection to the server was lost. ' +
    "The parts shown above arrived and were charged; convert the file again for the rest.</p>";

  /** An EventSource-like reader of a POST's text/event-stream answer (see the top). */
  class PostedEventSource extends EventTarget {
    constructor(url, body) {
      super();
      this.url = url;
      this.withCredentials = false;
      this.readyState = 0; // CONNECTING; 1 OPEN; 2 CLOSED (only by close())
      this.onopen = null;
      this.onerror = null; // never called: the extension would reconnect, uploading again
      this.controller = new AbortController();
      this.run(body);
    }

    close() {
      this.readyState = 2;
      this.controller.abort();
    }

    emit(name, data) {
      this.dispatchEvent(new MessageEvent(name, { data }));
    }

    async run(body) {
      let response;
      try {
        response = await fetch(this.url, {
          method: "POST",
          body,
          credentials: "same-origin",
          headers: { "HX-Request": "true", Accept: "text/event-stream" },
          signal: this.controller.signal,
        });
      } catch {
        if (this.readyState !== 2) this.emit("lost", LOST);
        return;
      }
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        // Refused before the stream began (a used-up grant, a bad file): a fragment.
        const html = await response.text().catch(() => "");
        if (this.readyState !== 2) this.emit("refused", html || LOST);
        return;
      }
      this.readyState = 1;
      if (this.onopen) this.onopen(new Event("open"));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) !== -1) {
            this.dispatch(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch {
        // fall through: a stream that breaks before its `done` event is lost
      }
      if (this.readyState !== 2) this.emit("lost", LOST);
    }

    dispatch(block) {
      // One event of the text/event-stream format: event, data lines, comments.
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line === "" || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (data.length > 0) this.emit(name, data.join("\n"));
    }
  }

  htmx.createEventSource = function (url) {
    const body = pendingUpload;
    pendingUpload = null;
    if (body === null) throw new Error("a conversion stream needs the form's upload");
    return new PostedEventSource(url, body);
  };

  function conversionEnded(root) {
    const form = document.getElementById("convert-form");
    if (!form) return;
    const card = root.closest ? root.closest(".conversion") : null;
    if (card) card.removeAttribute("aria-busy");
    form.querySelector("#convert-button").disabled = false;
    say(form, "");
  }

  // ---- the file picker and what each swap brings -----------------------------------------

  function showFile(zone, input) {
    const info = zone.querySelector("[data-file-info]");
    const file = input.files[0];
    info.hidden = !file;
    info.textContent = file ? `${file.name} · ${formatSize(file.size)}` : "";
    zone.classList.toggle("has-file", Boolean(file));
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

  function within(root, selector) {
    const found = Array.from(root.querySelectorAll ? root.querySelectorAll(selector) : []);
    if (root.matches && root.matches(selector)) found.unshift(root);
    return found;
  }

  htmx.onLoad((root) => {
    for (const zone of within(root, "[data-dropzone]")) setUpDropzone(zone);
    for (const balance of within(root, "[data-grant-balance]")) {
      updateGrant(balance.dataset, balance.parentElement || root);
    }
    // The end of a conversion: its `done` footer, or an alert in place of the stream.
    const inResult = root.closest && root.closest("#result");
    if (inResult && within(root, "[data-done], [role=alert]").length > 0) conversionEnded(root);
  });

  // ---- 4. copy buttons --------------------------------------------------------------------

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
