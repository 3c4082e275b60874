"""Hostile input and secrets: what the engine never stores, never logs, and never 500s on.

- After a full flow (grants, calls that succeed, fail upstream, are refused, streams,
  an idempotent retry, a client that leaves, a sweep), no grant token, secret key,
  session JWT or upstream key is anywhere in the database (every column of every
  table) or in the logs (every logger at DEBUG, SQL parameters included, and stdout).
- A non-ASCII, binary or huge Authorization / x-wattfare-grant header is a 401 (or a
  402 for a grant nobody has), never a 500, in process and through a real HTTP server
  (which may itself answer 431 to a header too large to read).
- A grant cannot be created by a cross-site request: no cookie is a credential, form
  and text/plain bodies are refused, and no CORS header invites a browser to send one.
- Every /api/v1 route answers hostile bodies (deep nesting, huge numbers, wrong types,
  odd unicode, invalid UTF-8, 3 MB) with a 4xx in the JSON error shape, charging nothing.
- `flask wattfare sweep` releases stale holds and only those.

Rate limits are on here (generously), so their key functions see the hostile headers too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, inspect, select, text

from tests.fake_upstream import FAKE_MODEL, ErrorReply, FakeUpstream, Reply, StreamReply
from tests.helpers import chat_body, mint_session
from wattfare_demo.engine import grants
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.engine.pricing import DEFAULT_PRICES
from wattfare_demo.engine.tokens import new_grant_token, parse_secret_key
from wattfare_demo.extensions import db

MODEL = FAKE_MODEL
UPSTREAM_KEY = "sk-or-v1-" + "9f3e" * 16


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
        "WATTFARE_UPSTREAM_TIMEOUT": 2.0,
        "WATTFARE_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": "memory://",
        "WATTFARE_RATE_LIMIT_GRANTS": "100000/minute",
        "WATTFARE_RATE_LIMIT_CHAT": "100000/minute",
        "WATTFARE_RATE_LIMIT_CONSENT": "100000/minute",
    }


def session_headers(secret_key: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_session(secret_key, **claims)}"}


def app_id_of(secret_key: str) -> str:
    parsed = parse_secret_key(secret_key)
    assert parsed is not None
    return parsed.app_id


# --- a full flow, and the secrets it handled ------------------------------------------------


def full_flow(app: Flask, client: FlaskClient, secret_key: str, upstream: FakeUpstream) -> list:
    """Everything a day of traffic does; returns every secret that went over the wire."""
    sessions = [mint_session(secret_key, sub="user-42"), mint_session(secret_key)]
    tokens = []
    receipts = []
    for session, body in zip(
        sessions, [{"requests": 6}, {"requests": 2, "maxUsd": 0.5}], strict=True
    ):
        response = client.post(
            "/api/v1/grants", json=body, headers={"Authorization": f"Bearer {session}"}
        )
        assert response.status_code == 200
        tokens.append(response.get_json()["grantToken"])
        receipts.append(response.get_json()["receiptUrl"].rsplit("/", 1)[1])
    grant, capped = tokens
    api = {"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant}
    capped_api = {**api, "x-wattfare-grant": capped}

    def call(headers, body, status, **kwargs):
        response = client.post("/api/v1/chat/completions", headers=headers, json=body, **kwargs)
        response.get_data()  # run a stream to its end
        assert response.status_code == status, response.get_data(as_text=True)[:300]
        return response

    call(api, chat_body(), 200)
    call(api, chat_body(stream=True), 200)
    call(capped_api, chat_body(), 200)
    assert client.get("/api/v1/grant", headers=api).status_code == 200
    assert client.get("/api/v1/models", headers=api).status_code == 200
    # The upstream: a success, an idempotent retry, failures, a reset mid-stream.
    upstream_body = {**chat_body(), "model": MODEL}
    upstream.respond(Reply(usage=(5, 5)), ErrorReply(status=500), ErrorReply(status=401))
    call({**api, "Idempotency-Key": "retry-1"}, upstream_body, 200)
    call({**api, "Idempotency-Key": "retry-1"}, upstream_body, 200)  # replayed
    call(api, upstream_body, 502)
    call(api, upstream_body, 502)
    upstream.respond(StreamReply(chunks=("a", "b"), reset_after=1))
    call(api, {**upstream_body, "stream": True}, 200)
    # A client that leaves a stream after its first chunk.
    response = client.post(
        "/api/v1/chat/completions", headers=api, json=chat_body(stream=True), buffered=False
    )
    next(iter(response.response))
    response.close()
    # Refusals: a used-up grant, a wrong key, a forged grant, bad sessions.
    call(capped_api, chat_body(), 200)
    call(capped_api, chat_body(), 402)
    wrong_key = secret_key[:-8] + "0badc0de"
    call({**api, "Authorization": f"Bearer {wrong_key}"}, chat_body(), 401)
    forged = new_grant_token()
    call({**api, "x-wattfare-grant": forged}, chat_body(), 402)
    expired = mint_session(secret_key, iat=int(time.time()) - 3600, exp=int(time.time()) - 60)
    tampered = sessions[0][:-4] + "AAAA"
    for bad in (expired, tampered):
        refused = client.post(
            "/api/v1/grants", json={"requests": 1}, headers={"Authorization": f"Bearer {bad}"}
        )
        assert refused.status_code == 401
    # Secrets pasted into a URL by mistake: a 404, and a log line that masks them.
    assert client.get(f"/api/v1/grant/{grant}?key={secret_key}").status_code == 404
    # A crashed worker's hold, released by the sweeper.
    with app.app_context():
        grants.reserve(
            app_id_of(secret_key), grant, model="local/markdown",
            price=DEFAULT_PRICES["local/markdown"], prompt_tokens=10, max_tokens=10,
            hold_ttl=-1,
        )  # fmt: skip
        db.session.remove()
    result = app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    assert "Released 1 stale hold(s)." in result.output
    # The visitor's receipt (its capability is in the path), and its Revoke (in the body).
    assert client.get(f"/wattfare/receipt/{receipts[1]}").status_code == 200
    revoked = client.post(
        "/wattfare/receipt/revoke",
        data={"receipt": receipts[1]},
        headers={"Origin": "http://localhost"},
    )
    assert revoked.status_code == 303
    return [
        *tokens,
        *receipts,
        secret_key,
        *sessions,
        UPSTREAM_KEY,
        wrong_key,
        forged,
        expired,
        tampered,
    ]


def fragments(secret: str) -> list[str]:
    """The secret, and the parts of it that are secret on their own."""
    parts = [secret]
    if secret.startswith(("wfg_", "wfr_")):
        parts.append(secret[4:])
    elif secret.startswith("sk_"):
        parts.append(secret.rsplit("_", 1)[1])
    elif secret.count(".") == 2:  # a JWT: its signature, and the token without it
        parts += [secret.rsplit(".", 1)[1], secret.rsplit(".", 1)[0]]
    return parts


def dump_database(app: Flask) -> str:
    """Every value of every column of every table, as text."""
    lines = []
    with app.app_context():
        names = inspect(db.engine).get_table_names()
        assert {"apps", "grants", "usage"} <= set(names)
        with db.engine.connect() as conn:
            for name in names:
                quoted = db.engine.dialect.identifier_preparer.quote(name)
                for row in conn.execute(text(f"SELECT * FROM {quoted}")):  # noqa: S608
                    lines.append(f"{name}: " + " | ".join(map(str, row)))
        db.session.remove()
    return "\n".join(lines)


def test_no_secret_is_stored_in_the_database(app, client, secret_key, upstream) -> None:
    secrets = full_flow(app, client, secret_key, upstream)
    dump = dump_database(app)
    for secret in secrets:
        for part in fragments(secret):
            assert part not in dump, f"{part[:12]}… is stored in plain text"
    # What is stored instead: hashes (so the dump above did see the rows).
    assert hashlib.sha256(secrets[0].encode()).hexdigest() in dump
    assert hashlib.sha256(secret_key.encode()).hexdigest() in dump
    with app.app_context():
        statuses = sorted(db.session.scalars(select(Usage.status)))
        assert statuses.count("pending") == 0
        db.session.remove()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # the traceback included, if any


@contextmanager
def every_log_at_debug() -> Iterator[_Collect]:
    """Every logger at DEBUG into one handler, including those that do not propagate."""
    collect = _Collect()
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    for logger in loggers:
        if logger is logging.getLogger() or not logger.propagate:
            logger.addHandler(collect)
    try:
        yield collect
    finally:
        for logger, level in saved:
            logger.setLevel(level)
            logger.removeHandler(collect)


def test_no_secret_is_logged(app, client, secret_key, upstream, capfd) -> None:
    with every_log_at_debug() as logs:
        secrets = full_flow(app, client, secret_key, upstream)
    out, err = capfd.readouterr()
    logged = "\n".join(logs.lines) + out + err
    # The SQL went through the log, with its parameters (the hashes), and so did the
    # request lines and the failures: the capture saw the whole flow.
    assert "UPDATE grants" in logged or "update grants" in logged.lower()
    assert "wattfare.request" in logged and "status=502" in logged
    assert hashlib.sha256(secrets[0].encode()).hexdigest() in logged
    for secret in secrets:
        for part in fragments(secret):
            assert part not in logged, f"{part[:12]}… was logged"


# --- hostile headers ---------------------------------------------------------------------------

HUGE = 60_000  # under the 64 KiB line limit of http.server: reaches the app
ODD_VALUES = [
    "ünïcödé",
    "🔑" * 10,
    "\x00\x01\x7f",
    "é" * HUGE,
    "a" * HUGE,
    "sk_test_0123456789abcdef_" + "é" * 40,
    "sk_test_" + "a" * 16 + "_" + "0" * 10_000,
    "wfg_" + "é" * 36,
    "eyJ" + "é" * 100 + ".eyJ.sig",
    "e30." * 5000 + "e30",
    ".".join(["eyJhbGciOiJIUzI1NiJ9", "é" * 20, "x"]),
]


def latin1(value: str) -> str:
    """A header value as a WSGI server hands it over: its UTF-8 bytes read as latin-1."""
    return value.encode().decode("latin-1")


def _assert_json_error(response, statuses: set[int]) -> None:
    assert response.status_code in statuses, (response.status_code, response.data[:200])
    assert response.is_json
    assert set(response.get_json()["error"]) >= {"code", "message", "type"}


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_hostile_authorization_headers_are_401(client, make_grant, value) -> None:
    grant = make_grant(1)
    for raw in (value, latin1(value)):
        for scheme in ("Bearer ", "bearer ", ""):
            auth = {"Authorization": scheme + raw}
            routes = [
                ("POST", "/api/v1/grants", {"requests": 1}, {}),
                ("POST", "/api/v1/chat/completions", chat_body(), {"x-wattfare-grant": grant}),
                ("GET", "/api/v1/grant", None, {"x-wattfare-grant": grant}),
                ("GET", "/api/v1/models", None, {}),
            ]
            for method, path, body, extra in routes:
                response = client.open(path, method=method, json=body, headers={**auth, **extra})
                _assert_json_error(response, {401})


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_hostile_grant_headers_are_402_or_401(app, client, secret_key, value) -> None:
    for raw in (value, latin1(value)):
        for auth, status in ((f"Bearer {secret_key}", 402), ("Bearer nope", 401)):
            headers = {"Authorization": auth, "x-wattfare-grant": raw}
            response = client.post("/api/v1/chat/completions", json=chat_body(), headers=headers)
            _assert_json_error(response, {status, 400} if not raw.strip() else {status})
            response = client.get("/api/v1/grant", headers=headers)
            _assert_json_error(response, {status, 400} if not raw.strip() else {status})
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Usage)) == 0
        db.session.remove()


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library cleans them up); read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)  # all sent: the server reads to the end, then answers
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, payload


@pytest.mark.parametrize(
    "value",
    [
        "ünïcödé".encode(),
        b"\xff\xfe\xfd\x80",
        b"\xc3\x28",  # invalid UTF-8
        b"sk_test_" + "é".encode() * 30,
        b"a" * HUGE,
        "é".encode() * (HUGE // 2),
        b"a" * 70_000,  # past the line limit: the server itself answers 431
    ],
    ids=["utf8", "binary", "bad-utf8", "sk-ish", "60k", "60k-utf8", "70k"],
)
def test_hostile_headers_over_real_http_are_never_500(live_server, make_grant, value) -> None:
    grant = make_grant(1).encode()
    body = json.dumps(chat_body()).encode()
    for name, extra in ((b"Authorization: Bearer ", b""), (b"x-wattfare-grant: ", b"")):
        auth = b"" if name.startswith(b"Authorization") else b"Authorization: Bearer x\r\n"
        for path, method, payload in (
            (b"/api/v1/chat/completions", b"POST", body),
            (b"/api/v1/grants", b"POST", b'{"requests": 1}'),
            (b"/api/v1/grant", b"GET", b""),
        ):
            head = (
                method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
                + b"x-wattfare-grant: " + grant + b"\r\n"
                + b"Content-Type: application/json\r\n"
                + b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
                + b"Connection: close\r\n" + name + value + extra
            )  # fmt: skip
            status, headers, answer = raw_request(live_server.url, head, payload)
            assert status < 500, (path, status, answer[:200])
            if len(value) > 65_536:
                assert status == 431
            else:
                assert status == 401, (path, status, answer[:200])
                assert headers["content-type"] == "application/json"
                assert json.loads(answer)["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("path", ["/api/v1/grants", "/api/v1/chat/completions"])
def test_a_3_mb_body_over_real_http_is_a_json_413(
    app, live_server, secret_key, make_grant, path
) -> None:
    # Valid JSON for its first megabytes: a server that read only as far as its limit
    # (as werkzeug does with a chunked body) would create a grant from it.
    body = b'{"requests": 1}' + b" " * (3 * 1024 * 1024)
    credential = mint_session(secret_key) if path.endswith("grants") else secret_key
    auth = f"Authorization: Bearer {credential}\r\nx-wattfare-grant: {make_grant(1)}\r\n"
    for framing in (f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"):
        payload = body
        if framing.startswith("Transfer"):  # no length up front: cut while it is read
            step = 64 * 1024
            payload = (
                b"".join(
                    b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
                    for i in range(0, len(body), step)
                )
                + b"0\r\n\r\n"
            )
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\n{auth}{framing}"
        ).encode()
        status, headers, answer = raw_request(live_server.url, head, payload)
        assert status == 413, (framing, answer[:200])
        assert headers["content-type"] == "application/json"
        assert json.loads(answer)["error"]["code"] == "request_entity_too_large"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Grant)) == 1  # make_grant's
        db.session.remove()


# --- cross-site requests ---------------------------------------------------------------------


def test_a_grant_cannot_be_created_by_a_cross_site_request(app, client, secret_key) -> None:
    session = mint_session(secret_key)
    site = {"Origin": "https://evil.example", "Referer": "https://evil.example/page"}
    # A browser sends cookies cross-site, never an Authorization header it was not
    # allowed to: no cookie, whatever its name or value, is a credential here.
    for name in ("session", "wattfare_session", "Authorization", "token"):
        client.set_cookie(name, session)
        client.set_cookie(name, f"Bearer {session}")
    for body in ({"json": {"requests": 3}}, {"data": "requests=3"}):
        response = client.post("/api/v1/grants", headers=site, **body)
        _assert_json_error(response, {401})
    # The bodies a cross-site form can send without a preflight are refused even with
    # a valid session token, so a token that leaked into a page is not enough either.
    auth = {**site, "Authorization": f"Bearer {session}"}
    for content_type, data in (
        ("application/x-www-form-urlencoded", "requests=3"),
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="requests"'
         "\r\n\r\n3\r\n--x--\r\n"),
        ("text/plain", '{"requests": 3}'),
        ("text/plain; charset=utf-8", '{"requests": 3}'),
    ):  # fmt: skip
        response = client.post(
            "/api/v1/grants", data=data, headers={**auth, "Content-Type": content_type}
        )
        _assert_json_error(response, {400})
        assert response.get_json()["error"]["param"] == "body"
    # No CORS grant: a page on another origin cannot read or preflight its way in.
    preflight = client.options(
        "/api/v1/grants",
        headers={
            **site,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code < 500
    for response in (preflight, client.post("/api/v1/grants", headers=auth, json={})):
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Grant)) == 0
        db.session.remove()


# --- stale holds: flask wattfare sweep -----------------------------------------------------


def test_flask_wattfare_sweep_releases_only_stale_holds(app, make_grant, secret_key) -> None:
    token = make_grant(3, max_usd=1)
    price = DEFAULT_PRICES["local/markdown"]
    with app.app_context():
        args = dict(model="local/markdown", price=price, prompt_tokens=100, max_tokens=50)
        crashed = grants.reserve(app_id_of(secret_key), token, hold_ttl=-1, **args)
        running = grants.reserve(app_id_of(secret_key), token, hold_ttl=900, **args)
        db.session.remove()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["wattfare", "sweep"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "Released 1 stale hold(s)."
    with app.app_context():
        grant = db.session.scalar(select(Grant))
        assert (grant.used, grant.reserved, grant.held_pusd) == (0, 1, running.hold_pusd)
        assert db.session.get(Usage, crashed.usage_id).status == "expired"
        assert db.session.get(Usage, running.usage_id).status == "pending"
        # The crashed worker comes back and settles late: not charged twice, nor at all.
        grants.settle(crashed, prompt_tokens=100, completion_tokens=50, price=price, duration_ms=1)
        grants.settle(running, prompt_tokens=100, completion_tokens=10, price=price, duration_ms=1)
        grant = db.session.scalar(select(Grant))
        assert (grant.used, grant.reserved, grant.held_pusd) == (1, 0, 0)
        assert grant.spent_pusd == price.cost_pusd(100, 10)
        db.session.remove()
    again = runner.invoke(args=["wattfare", "sweep"])
    assert again.output.splitlines()[0] == "Released 0 stale hold(s)."


# --- hostile bodies on every /api/v1 route -----------------------------------------------------

DEEP = 100_000
HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("whitespace", b"  \n "),
    ("not-json", b"requests=3"),
    ("truncated", b'{"requests": 3'),
    ("array", b"[1, 2]"),
    ("string", b'"hello"'),
    ("null", b"null"),
    ("number", b"3"),
    ("deep-array", b"[" * DEEP + b"]" * DEEP),
    ("deep-object", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("deep-field", b'{"requests": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("deep-messages", b'{"model": "local/markdown", "messages": ' + b"[" * DEEP + b"]" * DEEP
     + b"}"),
    ("huge-int", b'{"requests": 1' + b"0" * 5000 + b"}"),
    ("huge-int-max-tokens", b'{"model": "local/markdown", "max_tokens": 1' + b"0" * 5000
     + b', "messages": [{"role": "user", "content": "x"}]}'),
    ("huge-exponent", b'{"requests": 1e999999999, "maxUsd": 1e999999999}'),
    ("tiny-exponent", b'{"requests": 1, "maxUsd": 1e-999999999}'),
    ("nan", b'{"requests": NaN, "maxUsd": NaN}'),
    ("infinity", b'{"requests": 1, "maxUsd": Infinity}'),
    ("neg-infinity", b'{"requests": 1, "max_tokens": -Infinity}'),
    ("i64", b'{"requests": 9223372036854775808, "maxUsd": 9223372036854775808}'),
    ("bom", b'\xef\xbb\xbf{"requests": 1}'),
    ("bad-utf8", b'{"requests": 1, "model": "\xff\xfe"}'),
    ("utf16", '{"requests": 1}'.encode("utf-16")),
    ("nul", b'{"requests": 1, "model": "\\u0000", "messages": "\\u0000"}'),
    ("lone-surrogate-model", b'{"requests": 1, "model": "\\ud800", "messages": [{"role": '
     b'"user", "content": "x"}]}'),
    ("lone-surrogate-content", b'{"model": "local/markdown", "messages": [{"role": "user", '
     b'"content": "\\udfff\\ud800 text"}]}'),
    ("lone-surrogate-key", b'{"\\ud800": 1, "requests": 1}'),
    ("lone-surrogate-role", b'{"model": "local/markdown", "messages": [{"role": "\\ud800", '
     b'"content": "x"}]}'),
    ("lone-surrogate-upstream", b'{"model": "fake/model", "messages": [{"role": "user", '
     b'"content": "\\ud800"}]}'),
    ("lone-surrogate-option", b'{"model": "fake/model", "messages": [{"role": "user", '
     b'"content": "x"}], "user": "\\udc00"}'),
    ("deep-lone-surrogate", b'{"requests": 1, "x": ' + b"[" * 600 + b'"\\ud800"' + b"]" * 600
     + b"}"),
    ("rtl-model", '{"model": "\u202elocal/markdown", "messages": [{"role": "user", "content": '
     '"x"}]}'.encode()),
    ("duplicate-keys", b'{"requests": 1, "requests": 1000}'),
]  # fmt: skip

WRONG_TYPES: list[dict[str, Any]] = [
    {"requests": value}
    for value in (None, "3", True, [], {}, 1.5, -1, 0, 101, 10**30, [3], {"$gt": 0})
] + [
    {"requests": 1, "maxUsd": value}
    for value in ("1", True, [], {}, -1, 0, 10**30, 1e-30, {"usd": 1})
] + [
    {"model": value, "messages": [{"role": "user", "content": "x"}]}
    for value in (None, 5, True, [], {}, "", " ", "x" * 100_000)
] + [
    {"model": "local/markdown", "messages": value}
    for value in (None, "x", 5, {}, [], [None], [[]], ["x"], [{}], [{"role": 1}],
                  [{"role": "user"}], [{"role": "user", "content": 5}],
                  [{"role": "user", "content": {"a": 1}}], [{"role": "user", "content": [1]}],
                  [{"role": "user", "content": [{"type": 5}]}],
                  [{"role": "user", "content": "x"}] * 10_000)
] + [
    {"model": "local/markdown", "messages": [{"role": "user", "content": "x"}], field: value}
    for field, values in {
        "max_tokens": (0, -1, "10", True, 1.5, [], 10**30),
        "max_completion_tokens": (0, "10", {}),
        "stream": ("true", 1, None, [], {}),
        "n": (0, 2, "1", [], -1),
    }.items()
    for value in values
]  # fmt: skip


def hostile_requests(app: Flask) -> list[tuple[str, str, bytes, str]]:
    """(method, path, body, content type) for every /api/v1 route and every body above."""
    routes = sorted(
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    )
    assert ("POST", "/api/v1/chat/completions") in routes and ("POST", "/api/v1/grants") in routes
    bodies = [body for _, body in HOSTILE_BODIES]
    bodies += [json.dumps(value).encode() for value in WRONG_TYPES]
    requests = []
    for method, path in routes:
        for body in bodies:
            requests.append((method, path, body, "application/json"))
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "", "json"):
            requests.append((method, path, b'{"requests": 1}', content_type))
        requests.append(
            (method, path, b'{"requests": 1}' + b" " * (3 * 1024 * 1024), "application/json")
        )
    return requests


def test_every_hostile_body_is_a_json_4xx_on_every_route(
    app, client, make_grant, secret_key
) -> None:
    grant = make_grant(2)
    session = mint_session(secret_key)
    seen: dict[int, int] = {}
    for method, path, body, content_type in hostile_requests(app):
        headers = {
            "Authorization": f"Bearer {session if path.endswith('/grants') else secret_key}",
            "x-wattfare-grant": grant,
        }
        if content_type:
            headers["Content-Type"] = content_type
        response = client.open(path, method=method, data=body, headers=headers)
        status = response.status_code
        seen[status] = seen.get(status, 0) + 1
        where = f"{method} {path} {content_type} {body[:80]!r}… -> {status}"
        assert status < 500, where
        if len(body) > 3 * 1024 * 1024:
            assert status == 413, where
        if status >= 400:
            assert response.is_json, where
            error = response.get_json()["error"]
            assert error["code"] and error["message"], where
        elif method == "POST" and path.endswith("/chat/completions"):
            raise AssertionError(f"a hostile body was served: {where}")
    assert 400 in seen and 413 in seen
    with app.app_context():
        row = db.session.scalar(select(Grant).where(Grant.requests == 2))
        assert (row.used, row.reserved, row.spent_pusd, row.held_pusd) == (0, 0, 0, 0)
        assert db.session.scalar(select(func.count()).select_from(Usage)) == 0
        db.session.remove()
