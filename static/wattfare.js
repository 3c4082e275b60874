/*
 * wattfare.js: the browser client for Wattfare one-time grants (the twin of
 * `wattfare/client`). Plain JavaScript, no dependencies, no build step.
 *
 *   Script tag:  <script src="/static/wattfare.js"></script>  →  window.Wattfare
 *   Module:      import { createWattfare } from "/static/wattfare.mjs";
 *
 *   const wf = Wattfare.createWattfare({
 *     publishableKey: "pk_test_…",
 *     // POSTed on this page's origin with the question, { requests, maxUsd, model? },
 *     // and answers { token, expiresAt }: a session token bound to that question.
 *     session: "/api/wattfare-token",
 *   });
 *   button.onclick = async () => {
 *     const grant = await wf.requestGrant({ requests: 1, maxUsd: 0.5 });
 *     if (!grant) return; // the visitor denied, or closed the popup
 *     // send grant.grantToken to your server
 *   };
 *
 * How the popup and this page talk, and why: docs/browser-client.md.
 */
(function (root) {
  "use strict";
  // Loaded twice (a script tag and a module import)? Keep the first copy: the one-popup
  // rule needs one shared state.
  if (root.Wattfare) return;

  const DEFAULT_TIMEOUT_MS = 5 * 60 * 1000; // the session token lives 10 minutes at most
  const POLL_MS = 250; // how often `popup.closed` is looked at (a hint only)
  const CLOSE_GRACE_MS = 1000; // how long a closed-looking popup gets to say goodbye
  const DISMISS_WATCH_MS = 60 * 1000; // how long a dismissed popup is watched for its page
  const WINDOW_NAME = "wattfare_consent";

  class WattfareError extends Error {
    /**
     * code: popup_blocked | popup_busy | popup_unreachable | timeout | session_failed |
     *       grant_failed. For grant_failed, `reason` is the engine's error code
     *       (origin_not_allowed, unknown_publishable_key, invalid_request, session_invalid,
     *       …) and `param` the offending field, if any.
     */
    constructor(code, message, { reason = null, param = null } = {}) {
      super(message);
      this.name = "WattfareError";
      this.code = code;
      this.reason = reason;
      this.param = param;
    }
  }

  let current = null; // the one consent window this page may have open at a time

  function randomNonce() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function popupFeatures() {
    const width = 460;
    const height = 640;
    const left = window.screenX + Math.max(0, (window.outerWidth - width) / 2);
    const top = window.screenY + Math.max(0, (window.outerHeight - height) / 3);
    return `popup,width=${width},height=${height},left=${Math.round(left)},top=${Math.round(top)}`;
  }

  function createWattfare({ publishableKey, session, baseUrl, timeoutMs } = {}) {
    if (typeof publishableKey !== "string" || !publishableKey.startsWith("pk_")) {
      throw new TypeError("createWattfare: publishableKey must be your pk_test_… or pk_live_… key");
    }
    if (typeof session !== "function" && typeof session !== "string") {
      throw new TypeError("createWattfare: session must be a URL or an async function");
    }
    const sessionUrl = typeof session === "string" ? new URL(session, location.href) : null;
    if (sessionUrl && sessionUrl.origin !== location.origin) {
      throw new TypeError("createWattfare: the session URL must be on this page's origin");
    }
    // Where the engine lives: this origin by default (the embedded engine).
    const base = new URL(baseUrl || "/", location.href);
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    const engineOrigin = base.origin;
    const defaultTimeout = timeoutMs ?? DEFAULT_TIMEOUT_MS;

    // The session token is minted for this one question: the app's server sees what the
    // page will ask for, decides whether it allows it, and the engine holds the grant to
    // the token's answer (no more requests, no higher cap, one grant per token).
    async function sessionToken(question) {
      if (sessionUrl === null) {
        const value = await session(question);
        const token = typeof value === "string" ? value : value && value.token;
        if (typeof token !== "string" || !token) throw new Error("the session function gave no token");
        return token;
      }
      const response = await fetch(sessionUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify(question),
      });
      if (!response.ok) {
        // The app's server may say why (a question it does not allow, say): pass it on.
        const detail = await response.json().catch(() => null);
        const said = detail && typeof detail.message === "string" ? `: ${detail.message}` : "";
        throw new Error(`${sessionUrl.pathname} answered HTTP ${response.status}${said}`);
      }
      const body = await response.json();
      if (!body || typeof body.token !== "string") throw new Error("the answer has no token");
      return body.token;
    }

    /**
     * Ask the visitor to approve `requests` AI calls (and at most `maxUsd` dollars), on
     * `model` when the app's server binds its sessions to one (the popup shows it, with
     * the most the grant can cost). Call it straight from a click or tap: the popup must
     * open inside the gesture. Resolves to { grantToken, expiresAt, requests, receiptUrl },
     * or null if the visitor denies or closes the popup; rejects with a WattfareError
     * otherwise. receiptUrl is the visitor's page for the grant: show it to them.
     */
    function requestGrant({
      requests,
      maxUsd = null,
      model = null,
      timeoutMs = defaultTimeout,
    } = {}) {
      if (current) {
        current.popup.focus(); // browsers may ignore this; the error still says why
        return Promise.reject(
          new WattfareError("popup_busy", "A Wattfare consent window is already open."),
        );
      }
      const nonce = randomNonce();
      const url = new URL("wattfare/consent", base);
      url.searchParams.set("pk", publishableKey);
      url.searchParams.set("origin", location.origin);
      url.searchParams.set("nonce", nonce);
      if (requests != null) url.searchParams.set("requests", String(requests));
      if (maxUsd != null) url.searchParams.set("maxUsd", String(maxUsd));
      if (model != null) url.searchParams.set("model", String(model));

      // Synchronously, before anything is awaited: browsers allow popups only here.
      const popup = window.open(url.href, WINDOW_NAME, popupFeatures());
      if (!popup) {
        return Promise.reject(
          new WattfareError(
            "popup_blocked",
            "The browser blocked the Wattfare popup. Call requestGrant() from a click, " +
              "or allow popups for this site.",
          ),
        );
      }
      const state = { popup };
      current = state;

      return new Promise((resolve, reject) => {
        let ready = false; // the popup has said hello: the channel works
        let token = null;
        let handedOver = false;
        let closedSince = 0;

        const timer = setTimeout(() => {
          dismiss();
          fail("timeout", `No answer from the consent window in ${timeoutMs / 1000} s.`);
        }, timeoutMs);

        // `popup.closed` is only a hint: a window cut off by Cross-Origin-Opener-Policy
        // also reads as closed. A real close sends wattfare:closing (pagehide); this poll
        // only catches a goodbye that got lost, after a grace period.
        const poll = setInterval(() => {
          if (!popup.closed) {
            closedSince = 0;
            return;
          }
          closedSince = closedSince || Date.now();
          if (Date.now() - closedSince < CLOSE_GRACE_MS) return;
          if (ready) {
            finish(() => resolve(null));
          } else {
            fail(
              "popup_unreachable",
              "The consent window closed before it loaded, or the browser cut it off from " +
                "this page (is a Cross-Origin-Opener-Policy separating them?).",
            );
          }
        }, POLL_MS);

        // Close the window this request gives up on. Chromium ignores close() on a window
        // that is still on its initial about:blank while its cross-site navigation to the
        // consent page is under way (a session endpoint that fails at once, a short
        // timeout): the consent page then loads all the same, and would stay open for
        // nothing. So when the page first speaks for this request (wattfare:ready, or
        // wattfare:error), it has loaded: it is told to close itself (wattfare:cancel),
        // and closed again.
        // Not if a newer request has taken the window (it has the same name) meanwhile.
        function dismiss() {
          popup.close();
          const onLoaded = (event) => {
            if (event.source !== popup || event.origin !== engineOrigin) return;
            const message = event.data;
            if (!message || typeof message !== "object" || message.nonce !== nonce) return;
            stop();
            if (current && current.popup === popup) return;
            // The opener's close() may stay a no-op for this window now: ask the page,
            // which may close itself, too.
            popup.postMessage({ type: "wattfare:cancel", nonce }, engineOrigin);
            popup.close();
          };
          // Not `popup.closed` to end the watch early: right after a close() that the
          // browser then drops, it proves nothing.
          const watch = setTimeout(stop, DISMISS_WATCH_MS);
          function stop() {
            clearTimeout(watch);
            window.removeEventListener("message", onLoaded);
          }
          window.addEventListener("message", onLoaded);
        }

        function finish(settle) {
          if (current !== state) return; // already settled
          current = null;
          clearTimeout(timer);
          clearInterval(poll);
          window.removeEventListener("message", onMessage);
          settle();
        }

        function fail(code, message, details) {
          finish(() => reject(new WattfareError(code, message, details)));
        }

        function handOver() {
          if (current === state && ready && token && !handedOver) {
            handedOver = true;
            popup.postMessage({ type: "wattfare:session", nonce, token }, engineOrigin);
          }
        }

        function onMessage(event) {
          // Only our popup, only from the engine's origin, only about this question.
          if (event.source !== popup || event.origin !== engineOrigin) return;
          const message = event.data;
          if (!message || typeof message !== "object" || message.nonce !== nonce) return;
          switch (message.type) {
            case "wattfare:ready":
              ready = true;
              handOver();
              break;
            case "wattfare:grant": {
              const grant = message.grant || {};
              if (typeof grant.grantToken === "string" && typeof grant.expiresAt === "number") {
                const { grantToken, expiresAt, requests: approved } = grant;
                // The visitor's receipt, on the engine's origin (view and revoke only).
                const receiptUrl =
                  typeof grant.receiptUrl === "string" &&
                  grant.receiptUrl.startsWith(`${engineOrigin}/`)
                    ? grant.receiptUrl
                    : null;
                finish(() => resolve({ grantToken, expiresAt, requests: approved, receiptUrl }));
              } else {
                fail("grant_failed", "The consent window sent a malformed grant.");
              }
              break;
            }
            case "wattfare:deny":
            case "wattfare:closing":
              finish(() => resolve(null));
              break;
            case "wattfare:error": {
              const error = message.error || {};
              fail("grant_failed", error.message || "Wattfare refused the grant.", {
                reason: error.code || null,
                param: error.param || null,
              });
              break;
            }
          }
        }

        window.addEventListener("message", onMessage);
        sessionToken(model == null ? { requests, maxUsd } : { requests, maxUsd, model }).then(
          (value) => {
            token = value;
            handOver();
          },
          (error) => {
            if (current !== state) return; // answered already; the window may be reused
            dismiss();
            fail("session_failed", `Could not get a Wattfare session token: ${error.message}`);
          },
        );
      });
    }

    return Object.freeze({ requestGrant });
  }

  root.Wattfare = Object.freeze({ createWattfare, WattfareError });
})(globalThis);
