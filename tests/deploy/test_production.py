"""What a deploy relies on inside the app: /healthz, the proxy headers (as many hops as
WATTFARE_PROXY_HOPS trusts), HSTS and cookies in production, what production refuses to
start without, the settings applied to the demo app at each start, and the one request
log line (which never carries a token or a key).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest
from flask import jsonify, request, url_for

from tests.helpers import ORIGIN, chat_body, mint_session
from tests.procfile import ROOT, VENV_BIN, procfile_env, run_release
from wattfare_demo import ConfigError, create_app
from wattfare_demo.config import engine_options, load_settings

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


def proxied_app(app_config: dict[str, Any], hops: int):
    app = create_app({**app_config, "WATTFARE_PROXY_HOPS": hops})

    @app.get("/_test/external")
    def external():  # a view that needs the public URL, as an OAuth callback would
        return jsonify(
            url=url_for("health.healthz", _external=True),
            scheme=request.scheme,
            remote=request.remote_addr,
        )

    return app


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "convert.example.com",
    # A client-sent value first, then what the platform's proxy appended.
    "X-Forwarded-For": "198.51.100.66, 203.0.113.7",
}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_behind_one_trusted_proxy_its_headers_make_external_urls_https(app_config):
    client = proxied_app(app_config, hops=1).test_client()
    direct = client.get("/_test/external").get_json()
    assert direct["url"] == "http://localhost/healthz"
    proxied = client.get("/_test/external", headers=FORWARDED).get_json()
    assert proxied == {
        "url": "https://convert.example.com/healthz",
        "scheme": "https",
        "remote": "203.0.113.7",
    }


@pytest.mark.parametrize("backend", ["sqlite"])
def test_with_no_trusted_proxy_the_headers_are_ignored(app_config):
    """The development default: a client writing X-Forwarded-* itself changes nothing."""
    client = proxied_app(app_config, hops=0).test_client()
    answer = client.get(
        "/_test/external", headers=FORWARDED, environ_base={"REMOTE_ADDR": "192.0.2.50"}
    ).get_json()
    assert answer == {"url": "http://localhost/healthz", "scheme": "http", "remote": "192.0.2.50"}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_behind_two_proxies_the_second_entry_from_the_end_is_the_client(app_config):
    client = proxied_app(app_config, hops=2).test_client()
    headers = {**FORWARDED, "X-Forwarded-For": "10.9.9.9, 198.51.100.66, 203.0.113.7"}
    assert client.get("/_test/external", headers=headers).get_json()["remote"] == "198.51.100.66"


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("hops", [-1, 6, "one", True])
def test_a_bad_proxy_hop_count_stops_start_up(app_config, hops):
    with pytest.raises(ConfigError, match="WATTFARE_PROXY_HOPS"):
        create_app({**app_config, "WATTFARE_PROXY_HOPS": hops})
    with pytest.raises(ValueError, match="WATTFARE_PROXY_HOPS"):
        load_settings({"WATTFARE_PROXY_HOPS": "one"}, "instance")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_production_cookies_are_secure(app_config):
    app = create_app({**app_config, "WATTFARE_ENV": "production"})
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert app.config["PREFERRED_URL_SCHEME"] == "https"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_hsts_in_production_over_https_only(app, app_config):
    production = create_app({**app_config, "WATTFARE_ENV": "production", "WATTFARE_PROXY_HOPS": 1})
    client = production.test_client()
    # (The test client's default scheme is PREFERRED_URL_SCHEME, https in production.)
    over_https = client.get(
        "/healthz", base_url="http://localhost", headers={"X-Forwarded-Proto": "https"}
    )
    assert over_https.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert client.get("/", base_url="https://convert.example.com").headers[
        "Strict-Transport-Security"
    ]
    # Over plain http browsers ignore it, and a site without a certificate must stay usable.
    plain = client.get("/healthz", base_url="http://localhost")
    assert "Strict-Transport-Security" not in plain.headers
    # Development never sends it, even over https.
    local = app.test_client().get("/", base_url="https://localhost")
    assert "Strict-Transport-Security" not in local.headers


# --- what production refuses to start without ---------------------------------------------


def production_config(app_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**app_config, "WATTFARE_ENV": "production", **extra}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_production_refuses_to_start_without_database_url(app_config, monkeypatch):
    """Without it the app would run on a SQLite file on the dyno's disk, wiped at restart."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = production_config(app_config)
    del config["SQLALCHEMY_DATABASE_URI"]  # as in a deploy: DATABASE_URL decides
    with pytest.raises(ConfigError, match="needs DATABASE_URL") as refused:
        create_app(config)
    assert "heroku addons:create heroku-postgresql" in str(refused.value)
    # Said explicitly, SQLite is allowed (a server with a disk that lasts).
    assert create_app(production_config(app_config)).config["SQLALCHEMY_DATABASE_URI"]


def test_the_release_step_without_database_url_says_what_to_add(keys):
    result = run_release(
        procfile_env({"SECRET_KEY": "r" * 40, "WATTFARE_ALLOWED_ORIGINS": ORIGIN, **keys})
    )
    assert result.returncode != 0
    assert "needs DATABASE_URL" in result.stderr
    assert "unable to open database file" not in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_production_with_a_paid_provider_needs_a_daily_budget(app_config):
    paid = production_config(app_config, WATTFARE_UPSTREAM_URL="https://openrouter.ai/api/v1")
    with pytest.raises(ConfigError, match="WATTFARE_DAILY_BUDGET_USD"):
        create_app(paid)
    assert create_app({**paid, "WATTFARE_DAILY_BUDGET_USD": "5"})
    assert create_app({**paid, "WATTFARE_DAILY_BUDGET_USD": "off"})  # knowingly none
    with pytest.raises(ConfigError, match="not a daily budget"):
        create_app({**paid, "WATTFARE_DAILY_BUDGET_USD": "lots"})


@pytest.mark.parametrize("backend", ["sqlite"])
def test_allowed_origins_are_normalised_and_checked(app_config):
    app = create_app(
        {
            **app_config,
            "WATTFARE_ALLOWED_ORIGINS": [
                "https://Convert.Example.com:443/",
                "https://convert.example.com",
                "http://localhost:5000",
            ],
        }
    )
    assert app.config["WATTFARE_ALLOWED_ORIGINS"] == [
        "https://convert.example.com",
        "http://localhost:5000",
    ]
    with pytest.raises(ConfigError, match="is not an origin"):
        create_app({**app_config, "WATTFARE_ALLOWED_ORIGINS": ["https://convert.example.com/app"]})


# --- settings applied to the demo app at every start -------------------------------------


def test_app_name_and_daily_budget_are_applied_at_start(app, app_config):
    from wattfare_demo.engine.apps import app_for_secret_key
    from wattfare_demo.engine.cli import group  # noqa: F401 - the commands exist

    def demo_app(config):
        restarted = create_app(config)
        with restarted.app_context():
            row = app_for_secret_key(config["WATTFARE_SECRET_KEY"])
            found = (row.name, row.daily_budget_pusd)
            from wattfare_demo.extensions import db

            db.session.remove()
            db.engine.dispose()
        return found

    assert demo_app(app_config) == ("File converter demo", None)  # created with the default
    named = {**app_config, "WATTFARE_APP_NAME": "Markdownify", "WATTFARE_DAILY_BUDGET_USD": "5"}
    assert demo_app(named) == ("Markdownify", 5 * 10**12)
    # Unset, they leave what is stored (a name or budget set with the CLI survives).
    assert demo_app(app_config) == ("Markdownify", 5 * 10**12)
    assert demo_app({**app_config, "WATTFARE_DAILY_BUDGET_USD": "off"}) == ("Markdownify", None)


def test_flask_db_upgrade_on_a_fresh_database_does_not_tell_itself_to_run(tmp_path, keys):
    env = procfile_env(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}",
            "SECRET_KEY": "r" * 40,
            "WATTFARE_ALLOWED_ORIGINS": ORIGIN,
            **keys,
        }
    )
    result = run_release(env)
    assert result.returncode == 0, result.stderr
    assert "Running upgrade" in result.stderr
    assert "no tables yet" not in result.stderr + result.stdout


def test_a_served_app_without_tables_says_to_run_the_migrations(app_config, tmp_path, caplog):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    app = create_app(
        {**app_config, "SQLALCHEMY_DATABASE_URI": empty, "SQLALCHEMY_ENGINE_OPTIONS": {}}
    )
    assert "The database has no tables yet: run `flask db upgrade`." in caplog.text
    with app.app_context():
        from wattfare_demo.extensions import db

        db.engine.dispose()


def test_the_readmes_managing_apps_commands_work_as_written(tmp_path, keys):
    """The README's commands, run by bash from the checkout with the venv NOT on PATH (a
    fresh shell), against a migrated database."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Managing apps", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = [line.split("#", 1)[0].strip() for line in block[1].splitlines()]
    commands = [line for line in lines if line]
    assert any("set-budget" in c for c in commands) and any("sweep" in c for c in commands)
    settings = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'apps.db'}",
        "SECRET_KEY": "r" * 40,
        **keys,
    }
    env = {key: value for key, value in procfile_env(settings).items() if key != "PATH"}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p != VENV_BIN
    )
    migrate = subprocess.run(
        ["bash", "-c", ".venv/bin/flask --app app db upgrade"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    app_id = None
    for command in commands:
        if app_id is not None:
            command = command.replace("<app id>", app_id)
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        if app_id is None and (created := re.search(r"Created app (\w+)", result.stdout)):
            app_id = created[1]
    assert app_id is not None


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
