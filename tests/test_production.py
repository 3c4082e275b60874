"""What a deploy relies on inside the app: /healthz, the proxy headers, production
cookies, and the one request log line (which never carries a token or a key).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import jsonify, request, url_for

from tests.helpers import ORIGIN, chat_body, mint_session
from wattfare_demo import create_app
from wattfare_demo.config import engine_options

# Nothing listens on port 9 (discard) here: the connection is refused at once.
UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2"


def config_for(url: str, keys: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789",
        "SQLALCHEMY_DATABASE_URI": url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(url, 5),
        "WATTFARE_ALLOWED_ORIGINS": [ORIGIN],
        **keys,
        **extra,
    }


def request_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("wattfare.request ")]


def fields(line: str) -> dict[str, str]:
    """logfmt back into a dict (values may be JSON-quoted)."""
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


# --- /healthz ------------------------------------------------------------------------


def test_healthz_is_ok_when_the_database_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_is_503_when_the_database_is_unreachable(keys, caplog):
    # The app still boots (a worker restarted during database maintenance must not
    # crash-loop); it says so in the log and in /healthz.
    app = create_app(config_for(UNREACHABLE_DB, keys))
    assert "Database unreachable at start-up" in caplog.text
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable"}
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "127.0.0.1" not in body
    assert "database unavailable (OperationalError" in caplog.text
    with app.app_context():
        from wattfare_demo.extensions import db

        db.engine.dispose()


# --- behind the platform's proxy -------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_forwarded_proto_and_host_make_external_urls_https(app):
    @app.get("/_test/external")
    def external():  # a view that needs the public URL, as an OAuth callback would
        return jsonify(
            url=url_for("health.healthz", _external=True),
            scheme=request.scheme,
            remote=request.remote_addr,
        )

    client = app.test_client()
    direct = client.get("/_test/external").get_json()
    assert direct["url"] == "http://localhost/healthz"

    proxied = client.get(
        "/_test/external",
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "convert.example.com",
            # A client-sent value first, then what the platform's proxy appended.
            "X-Forwarded-For": "198.51.100.66, 203.0.113.7",
        },
    ).get_json()
    assert proxied == {
        "url": "https://convert.example.com/healthz",
        "scheme": "https",
        "remote": "203.0.113.7",
    }


@pytest.mark.parametrize("backend", ["sqlite"])
def test_production_cookies_are_secure(app_config):
    app = create_app({**app_config, "WATTFARE_ENV": "production"})
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert app.config["PREFERRED_URL_SCHEME"] == "https"


# --- the request log -------------------------------------------------------------------


def test_one_line_per_request_with_the_grant_outcome_and_no_secrets(
    app, client, secret_key, api_headers, capsys
):
    session = mint_session(secret_key)
    grant = client.post(
        "/api/v1/grants", json={"requests": 1}, headers={"Authorization": f"Bearer {session}"}
    ).get_json()["grantToken"]
    ok = client.post("/api/v1/chat/completions", headers=api_headers(grant), json=chat_body())
    refused = client.post("/api/v1/chat/completions", headers=api_headers(grant), json=chat_body())
    assert (ok.status_code, refused.status_code) == (200, 402)
    # Secrets where a careless client might put them: a query string and the path.
    client.get(f"/healthz?grant={grant}&key={secret_key}&session={session}")
    client.get(f"/api/v1/{grant}/{secret_key}")

    out, err = capsys.readouterr()
    lines = request_lines(out)
    assert len(lines) == 5
    created, settled, exhausted, health, missing = map(fields, lines)
    app_id = secret_key.split("_")[2]
    assert created == {
        "method": "POST",
        "path": "/api/v1/grants",
        "status": "200",
        "duration_ms": created["duration_ms"],
        "app": app_id,
        "outcome": "grant_created",
    }
    assert int(created["duration_ms"]) >= 0
    assert (settled["status"], settled["app"], settled["outcome"]) == ("200", app_id, "settled")
    assert (exhausted["status"], exhausted["outcome"]) == ("402", "refused:exhausted")
    assert (health["path"], health["app"], health["outcome"]) == ("/healthz", "-", "-")
    assert missing["path"] == "/api/v1/[redacted]/[redacted]"
    for secret in (grant, secret_key, session, session.split(".")[1]):
        assert secret not in out and secret not in err


def test_a_stream_is_logged_when_it_ends(client, make_grant, api_headers, capsys):
    response = client.post(
        "/api/v1/chat/completions",
        headers=api_headers(make_grant(1)),
        json=chat_body(stream=True),
    )
    capsys.readouterr()
    assert b"[DONE]" in response.get_data()
    assert request_lines(capsys.readouterr().out) == []  # still open
    response.close()  # what the WSGI server does after the last chunk
    (line,) = request_lines(capsys.readouterr().out)
    assert (fields(line)["status"], fields(line)["outcome"]) == ("200", "settled:stream")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_crafted_path_cannot_forge_a_log_line(client, capsys):
    # A non-API 404 page is a streamed response: its line comes when the server closes
    # it, as gunicorn always does.
    client.get("/nope%0Awattfare.request method=GET path=/admin status=200").close()
    (line,) = request_lines(capsys.readouterr().out)
    assert fields(line)["path"] == "/nope\nwattfare.request method=GET path=/admin status=200"
    assert fields(line)["status"] == "404"


def test_a_conversion_and_its_engine_call_log_a_line_each(client, make_grant, capsys):
    # /api/convert calls the engine in-process (the SDK over WSGITransport); Flask lets
    # that inner request share the outer one's `g`, which must not mix the two lines.
    grant = make_grant(2)
    capsys.readouterr()
    response = client.post(
        "/api/convert",
        json={"grantToken": grant, "file": "<h1>Report</h1>"},
        headers={"Origin": "http://localhost"},
    )
    assert response.status_code == 200, response.get_json()
    # The converter asks for the grant's status before it reads the file, then converts.
    status, inner, outer = (fields(line) for line in request_lines(capsys.readouterr().out))
    assert (status["path"], status["status"], status["outcome"]) == ("/api/v1/grant", "200", "-")
    assert (inner["path"], inner["outcome"]) == ("/api/v1/chat/completions", "settled")
    assert inner["app"] != "-"
    assert (outer["path"], outer["status"], outer["app"], outer["outcome"]) == (
        "/api/convert",
        "200",
        "-",
        "-",
    )
    assert int(outer["duration_ms"]) >= int(inner["duration_ms"])
