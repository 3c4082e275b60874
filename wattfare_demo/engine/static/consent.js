// The consent popup's script. Served by the engine with a strict CSP (no inline script):
// everything it needs comes from data attributes on <body>, rendered by consent.py.
//
// It talks to exactly one window, `window.opener`, on exactly one origin, the one the
// server checked against the app's allowed origins. Every message carries the nonce
// from the URL, so an answer is bound to its question. The protocol is in
// docs/browser-client.md:
//
//   popup → opener   wattfare:ready    (loaded, send me the session token)
//   opener → popup   wattfare:session  { token }
//   popup → opener   wattfare:grant    { grant: { grantToken, expiresAt, requests,
//                                                   receiptUrl } }
//                    | wattfare:deny | wattfare:error { error }
//                    wattfare:closing  (closed or navigated away before any answer)
//   opener → popup   wattfare:cancel   (the opener gave up before this page loaded: close)
"use strict";

(() => {
  // A human gets this long to see the page before Approve works: a double-click on the
  // app's button must not land on Approve ("double-clickjacking").
  const ARM_DELAY_MS = 500;
  const SESSION_WAIT_MS = 20000;

  const data = document.body.dataset;
  const opener = window.opener;
  const openerOrigin = data.openerOrigin || null;
  const nonce = data.nonce || null;
  const $ = (id) => document.getElementById(id);

  let answered = false; // the opener has had its one answer
  let busy = false; // an Approve is in flight
  let armed = false;
  let sessionToken = null; // in memory only

  function send(type, extra) {
    if (opener && !opener.closed && openerOrigin && nonce) {
      opener.postMessage({ type: `wattfare:${type}`, nonce, ...extra }, openerOrigin);
    }
  }

  function answer(type, extra) {
    if (answered) return;
    answered = true;
    send(type, extra);
  }

  function say(text) {
    const status = $("status");
    if (status) status.textContent = text;
  }

  function fail(error) {
    const code = error.code || "grant_failed";
    const message = error.message || "Something went wrong; nothing was approved.";
    sessionToken = null;
    document.body.dataset.state = "error";
    say("");
    const problem = $("problem");
    problem.textContent = message;
    problem.hidden = false;
    for (const id of ["approve", "deny"]) if ($(id)) $(id).hidden = true;
    $("close").hidden = false;
    $("close").focus();
    answer("error", { error: { code, message, param: error.param || null } });
  }

  function refresh() {
    const approve = $("approve");
    if (approve) approve.disabled = !(armed && sessionToken && !busy && !answered);
  }

  // --- the error page: tell the opener, show the message, offer Close ----------------

  if (data.state === "error") {
    answer("error", {
      error: {
        code: data.errorCode,
        message: data.errorMessage,
        param: data.errorParam || null,
      },
    });
    $("close").addEventListener("click", () => window.close());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") window.close();
    });
    $("close").focus();
    return;
  }

  // --- the consent page ------------------------------------------------------------

  // The session token carries its app and origin. The server checks its signature on
  // Approve; here we only make sure it asks for what this page shows, so the visitor
  // never approves one thing while the token says another.
  function claimsOf(token) {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload));
    } catch {
      return null;
    }
  }

  // What the token allows, against what this page asks. The server refuses a grant that
  // asks for more (403 exceeds_session); saying so before Approve spares the visitor a
  // click that cannot work. Null when it fits.
  function beyondSession(claims) {
    const requests = Number(data.requests);
    if (typeof claims.requests !== "number" || claims.requests < requests) {
      return (
        `The app allows at most ${claims.requests || 0} request(s) here, but this page ` +
        `asks for ${requests}. Nothing was approved.`
      );
    }
    // The model: the session's, or none. The page must name the one the app's server
    // did, since the visitor approves what this page shows (and its quote is for it).
    const model = data.model === undefined ? null : data.model;
    const allowed = typeof claims.model === "string" ? claims.model : null;
    if (allowed !== null && allowed !== model) {
      return (
        `The app allows this grant for ${allowed} only, but this page asks for ` +
        `${model === null ? "any model" : model}. Nothing was approved.`
      );
    }
    if (typeof claims.maxUsd === "number") {
      const cap = data.maxUsd === undefined ? Infinity : Number(data.maxUsd);
      if (!(cap <= claims.maxUsd)) {
        return (
          `The app allows a dollar cap of at most $${claims.maxUsd} here, but this page ` +
          `asks for ${data.maxUsd === undefined ? "no cap" : `$${data.maxUsd}`}. ` +
          "Nothing was approved."
        );
      }
    }
    return null;
  }

  function onSession(token) {
    const claims = claimsOf(token);
    const beyond = claims && beyondSession(claims);
    if (!claims) {
      fail({ code: "session_invalid", message: "The app sent a session token that is not a JWT." });
    } else if (claims.iss !== data.appId || claims.origin !== openerOrigin) {
      fail({
        code: "session_mismatch",
        message:
          `The app's session token is for ${claims.origin || "no origin"}, ` +
          `not for ${openerOrigin}. Nothing was approved.`,
      });
    } else if (beyond) {
      fail({ code: "exceeds_session", message: beyond });
    } else {
      sessionToken = token;
      say(data.autoApprove ? "Test mode: approving automatically…" : "");
      refresh();
      if (data.autoApprove) approve(); // test apps only: the server decides, not the URL
    }
  }

  async function approve() {
    if (answered || busy || !sessionToken) return;
    busy = true;
    refresh();
    $("deny").disabled = true;
    say("Approving…");
    let response;
    let body = null;
    try {
      response = await fetch(data.grantsUrl, {
        method: "POST",
        headers: { Authorization: `Bearer ${sessionToken}`, "Content-Type": "application/json" },
        body: data.grantBody, // built by the server from the amounts shown on this page
        credentials: "omit",
        cache: "no-store",
      });
      body = await response.json().catch(() => null);
    } catch {
      busy = false;
      fail({ code: "network_error", message: "Wattfare could not be reached. Try again." });
      return;
    }
    busy = false;
    if (response.ok && body && typeof body.grantToken === "string") {
      const { grantToken, expiresAt, requests, receiptUrl } = body;
      answer("grant", { grant: { grantToken, expiresAt, requests, receiptUrl } });
      approved(receiptUrl);
      window.close();
    } else {
      fail(
        (body && body.error) || {
          code: "grant_failed",
          message: `Wattfare refused the grant (HTTP ${response.status}). Nothing was approved.`,
        },
      );
    }
  }

  // The closing message offers the receipt: if the window stays open (a browser that
  // keeps it), the visitor can open it from here; the app shows the same link.
  function approved(receiptUrl) {
    document.body.dataset.state = "approved";
    const status = $("status");
    status.textContent = "Approved. Your receipt lists every call and can revoke it: ";
    if (typeof receiptUrl === "string" && receiptUrl.startsWith(`${location.origin}/`)) {
      const link = document.createElement("a");
      link.href = receiptUrl;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.id = "receipt-link";
      link.textContent = "open your receipt";
      status.append(link, ".");
    }
    for (const id of ["approve", "deny"]) $(id).hidden = true;
    $("close").hidden = false;
  }

  function deny() {
    if (answered || busy) return;
    answer("deny");
    window.close();
  }

  $("approve").addEventListener("click", approve);
  $("deny").addEventListener("click", deny);
  $("close").addEventListener("click", () => window.close());
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (answered) window.close();
    else deny();
  });

  window.addEventListener("message", (event) => {
    // Exactly our opener, on exactly the origin the server allowed, for this question.
    if (event.source !== opener || event.origin !== openerOrigin) return;
    const message = event.data;
    if (!message || message.nonce !== nonce) return;
    if (message.type === "wattfare:cancel") {
      // The opener gave up on this question (its session endpoint failed, or it timed
      // out) before this page had loaded, when its own close() may not have worked.
      answered = true;
      window.close();
      return;
    }
    if (message.type !== "wattfare:session") return;
    if (sessionToken || answered || typeof message.token !== "string") return;
    onSession(message.token);
  });

  // A window closed by the visitor (or navigated away) says so once, so the opener
  // never has to guess from `window.closed`, which COOP can make lie. On beforeunload:
  // Chromium drops messages that a cross-site window posts during pagehide/unload (it
  // is already being torn down), but delivers those posted during beforeunload.
  // pagehide stays as a second chance for browsers that fire no beforeunload.
  const goodbye = () => {
    if (!answered) answer("closing");
  };
  window.addEventListener("beforeunload", goodbye);
  window.addEventListener("pagehide", goodbye);

  if (!opener) {
    fail({
      code: "no_opener",
      message:
        "This window has lost the page that opened it, so it cannot answer. " +
        "Close it and use the app's button again.",
    });
    return;
  }

  setTimeout(() => {
    armed = true;
    refresh();
  }, ARM_DELAY_MS);
  // An opener that never sends the session (it was reloaded, or it is not the page it
  // claims to be) leaves nothing to approve: say so instead of waiting forever.
  setTimeout(() => {
    if (!sessionToken && !answered) {
      fail({
        code: "no_session",
        message: `${openerOrigin} did not send its session. Close this window and try again.`,
      });
    }
  }, SESSION_WAIT_MS);
  $("title").focus();
  send("ready");
})();
