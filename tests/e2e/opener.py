"""A stand-in for a customer's page, to test wattfare.js and the consent popup in a browser
without the demo's converter page.

`create_opener(...)` is a tiny Flask app (it knows nothing of the engine but its URL and
an app's keys, as a customer's app would): a page with a "Request a grant" button that
loads /static/wattfare.js (or wattfare.mjs) from its own origin, and a session endpoint
that mints tokens for its own origin with `tests.helpers.mint_session`, bound to the
question wattfare.js sends it (`{requests, maxUsd}`), as an app's server does. It sends
`Cross-Origin-Opener-Policy: same-origin-allow-popups`, as the demo's pages do.

The page is driven by its query string (see `OpenerPage.open`) and lists every outcome of
requestGrant() in <ol id="outcomes">, so tests wait on the page with `expect` and read
what the page itself received.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Flask,
    abort,
    jsonify,
    make_response,
    render_template_string,
    request,
    send_from_directory,
)
from playwright.sync_api import Page, expect
from werkzeug.serving import make_server

from tests.helpers import mint_session

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "static")

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Test opener</title></head>
<body>
  <h1>Test opener</h1>
  <button type="button" id="ask">Request a grant</button>
  <ol id="outcomes"></ol>
  <script type="application/json" id="config">{{ config|tojson }}</script>
  <script>
    // Every message this window receives, for the tests to inspect.
    window.receivedMessages = [];
    window.addEventListener("message", (e) => {
      window.receivedMessages.push({ origin: e.origin, data: e.data });
    });

    function setup({ createWattfare, WattfareError }) {
      const config = JSON.parse(document.getElementById("config").textContent);
      const params = new URLSearchParams(location.search);
      const record = (outcome) => {
        const li = document.createElement("li");
        li.dataset.kind = outcome.kind;
        li.textContent = JSON.stringify(outcome);
        document.getElementById("outcomes").append(li);
      };
      // session=function: an async function instead of a URL. It sets
      // window.sessionDelivered once wattfare.js has the token and has handed it over
      // (a task after the one that returned it: the hand-over runs in between).
      const session = params.get("session") === "function"
        ? async (question) => {
            const response = await fetch(config.sessionUrl + (params.get("sessionQuery") || ""), {
              method: "POST",
              headers: { "Content-Type": "application/json" },
              body: JSON.stringify(question),
            });
            const token = (await response.json()).token;
            setTimeout(() => { window.sessionDelivered = true; }, 0);
            return token;
          }
        : params.get("session") || config.sessionUrl;
      const wf = createWattfare({
        publishableKey: config.publishableKey,
        session,
        baseUrl: config.engineUrl || undefined,
        timeoutMs: params.has("timeoutMs") ? Number(params.get("timeoutMs")) : undefined,
      });
      const ask = () =>
        wf.requestGrant({
          requests: Number(params.get("requests") || 1),
          maxUsd: params.has("maxUsd") ? Number(params.get("maxUsd")) : null,
        }).then(
          (grant) => record(grant ? { kind: "grant", grant } : { kind: "null" }),
          (error) => record({
            kind: "error",
            code: error.code,
            reason: error.reason,
            param: error.param,
            message: error.message,
            wattfareError: error instanceof WattfareError,
          }),
        );
      document.getElementById("ask").addEventListener("click", ask);
      document.body.dataset.ready = "true";
      if (params.get("at") === "load") ask(); // no user gesture
    }
  </script>
  {% if module %}
  <script type="module">
    import * as Wattfare from {{ url_for(".static_file", name="wattfare.mjs")|tojson }};
    setup(Wattfare);
  </script>
  {% else %}
  <script src="{{ url_for('.static_file', name='wattfare.js') }}"></script>
  <script>setup(window.Wattfare);</script>
  {% endif %}
</body>
</html>
"""

# A hostile page: it opens the popup *claiming* an allowed origin, and offers it a valid
# session token for that origin, over and over.
SPOOF = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Spoofing opener</title></head>
<body>
  <button type="button" id="ask">Request a grant</button>
  <script type="application/json" id="config">{{ config|tojson }}</script>
  <script>
    const config = JSON.parse(document.getElementById("config").textContent);
    window.receivedMessages = [];
    window.posted = 0;
    window.addEventListener("message", (e) => window.receivedMessages.push(e.data));
    document.getElementById("ask").addEventListener("click", async () => {
      const nonce = "feedfacefeedfacefeedfacefeedface";
      const url = new URL("/wattfare/consent", config.engineUrl);
      url.search = new URLSearchParams({
        pk: config.publishableKey, origin: config.claimedOrigin, nonce, requests: "5",
      });
      const popup = window.open(url.href, "wattfare_consent", "popup,width=460,height=640");
      const token = config.claimedToken;
      setInterval(() => {
        popup.postMessage({ type: "wattfare:session", nonce, token }, "*");
        window.posted += 1;
      }, 50);
    });
  </script>
</body>
</html>
"""


# Holds back the session endpoint's answer (`session?gate=1`) while a test stages
# something in the browser: cleared by the test, set again to let the answer go.
SESSION_GATE = threading.Event()
SESSION_GATE.set()

# A hostile page for the forged-message tests: see opener_blueprint's /forge.
FORGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Forger</title></head>
<body>
  <p>Forger</p>
  <script type="application/json" id="config">{{ config|tojson }}</script>
  <script>
    const config = JSON.parse(document.getElementById("config").textContent);
    const message = config.message ? JSON.parse(config.message) : null;
    window.got = [];
    window.posted = 0;
    window.addEventListener("message", (e) => window.got.push({ origin: e.origin, data: e.data }));
    const targets = { parent: () => window.parent, handed: () => window.target };
    const target = targets[config.to] || (() => window.opener);
    if (message) {
      setInterval(() => {
        const to = target();
        if (!to) return;
        to.postMessage(message, "*");
        window.posted += 1;
      }, 50);
    }
  </script>
</body>
</html>
"""


def opener_blueprint(keys: dict[str, tuple[str, str]], engine_url: str | None) -> Blueprint:
    """keys: profile name → (publishable key, secret key); engine_url None = this origin."""
    bp = Blueprint("opener", __name__)

    def profile() -> tuple[str, str]:
        name = request.args.get("keys", "demo")
        if name not in keys:
            abort(404)
        return keys[name]

    def own_origin() -> str:
        return request.host_url.rstrip("/")

    @bp.after_request
    def coop(response):
        # Not on the forger: a COOP there would cut it off from the windows it attacks.
        if request.endpoint != f"{bp.name}.forge":
            response.headers["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups"
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/")
    def page() -> str:
        publishable_key, _ = profile()
        config = {
            "publishableKey": publishable_key,
            "engineUrl": request.args.get("engine", engine_url),
            "sessionUrl": "session?" + urlencode({"keys": request.args.get("keys", "demo")}),
        }
        return render_template_string(PAGE, config=config, module=request.args.get("module"))

    @bp.post("/session")
    def session():
        """The question as the page sends it, allowed as it is (`allow` in the query string
        overrides the requests allowed, to test a page asking for more than its server
        allows); with `gate`, the answer waits until a test opens SESSION_GATE."""
        _, secret_key = profile()
        question = request.get_json(silent=True) or {}
        if request.args.get("gate"):
            SESSION_GATE.wait(10)
        token = mint_session(
            secret_key,
            origin=own_origin(),
            requests=int(request.args.get("allow") or question.get("requests") or 1),
            maxUsd=question.get("maxUsd"),
        )
        return jsonify(token=token, expiresAt=0)

    @bp.post("/session/fail")
    def session_fail():
        return jsonify(error="the app's token endpoint is down"), 500

    @bp.post("/session/refuse")
    def session_refuse():
        """What an app's server says to a question it does not allow."""
        message = "This converter approves at most 5 conversions at once."
        return jsonify(error="invalid_request", message=message, param="requests"), 400

    @bp.get("/forge")
    def forge() -> str:
        """A hostile page: it posts `message` (JSON in the query string) to its opener,
        its parent, or the window handed to it (`window.target`), every 50 ms, with target
        origin "*"; and records every message it receives in `window.got`."""
        config = {"to": request.args.get("to", "opener"), "message": request.args.get("message")}
        return render_template_string(FORGE, config=config)

    @bp.get("/spoof")
    def spoof() -> str:
        publishable_key, secret_key = profile()
        claimed = request.args["claim"]
        config = {
            "publishableKey": publishable_key,
            "engineUrl": engine_url,
            "claimedOrigin": claimed,
            # What a hostile server could get from the app's own token endpoint.
            "claimedToken": mint_session(secret_key, origin=claimed, ttl=300),
        }
        return render_template_string(SPOOF, config=config)

    @bp.get("/coop-engine/wattfare/consent")
    def severing_consent_page():
        """A consent page that cuts itself off from its opener (COOP: same-origin)."""
        response = make_response("<!doctype html><title>Severed</title><p>Cut off.</p>")
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        return response

    @bp.get("/static/<name>")
    def static_file(name: str):
        if name not in {"wattfare.js", "wattfare.mjs"}:
            abort(404)
        return send_from_directory(STATIC, name)

    return bp


def create_opener(keys: dict[str, tuple[str, str]], engine_url: str | None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.register_blueprint(opener_blueprint(keys, engine_url))
    return app


@contextmanager
def serve(app: Flask) -> Iterator[int]:
    """Serve `app` on 127.0.0.1 and an ephemeral port (yielded) in a thread.

    It polls for shutdown every 20 ms instead of werkzeug's 500, so tests end quickly.
    """
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


class OpenerPage:
    """The test opener page: one button, a list of requestGrant() outcomes."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.button = page.get_by_role("button", name="Request a grant")
        self.outcomes = page.locator("#outcomes > li")

    def open(self, url: str, **params: Any) -> OpenerPage:
        """params: keys (profile), requests, maxUsd, module=1, session=function|<url>,
        timeoutMs, engine (baseUrl), at=load (call requestGrant with no user gesture)."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        self.page.goto(f"{url}/?{query}" if query else f"{url}/")
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        return self

    def click_and_expect_popup(self) -> Page:
        with self.page.expect_popup() as popup:
            self.button.click()
        return popup.value

    def outcome(self, index: int = 0) -> dict[str, Any]:
        """The index-th outcome, once the page has it."""
        item = self.outcomes.nth(index)
        expect(item).to_be_attached()
        return json.loads(item.text_content() or "{}")

    def expect_no_outcome(self) -> None:
        expect(self.outcomes).to_have_count(0)

    def received_messages(self) -> list[dict[str, Any]]:
        return self.page.evaluate("window.receivedMessages")
