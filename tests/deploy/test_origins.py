"""One origin normaliser (wattfare_demo/origins.py) for the SDK and the engine.

The attack review found an allowed origin refused (403 origin_not_allowed) when the SDK
was given it with its default port or in capitals: the two sides spelled origins apart.
Now both call the same function, so any spelling of an allowed origin is that origin.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.helpers import ORIGIN
from wattfare_demo.origins import normalise_origin
from wattfare_demo.sdk import Wattfare

ORIGINS = Path(__file__).resolve().parents[2] / "wattfare_demo" / "origins.py"
ALLOWED = "https://app.example.com"


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("https://app.example.com", ALLOWED),
        ("https://app.example.com/", ALLOWED),
        ("https://app.example.com:443", ALLOWED),  # the default port
        ("https://App.Example.COM", ALLOWED),  # upper case
        ("HTTPS://APP.EXAMPLE.COM:443/", ALLOWED),
        (" https://app.example.com ", ALLOWED),
        ("http://localhost:80", "http://localhost"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("https://app.example.com:80", "https://app.example.com:80"),  # not https's default
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://[0:0:0:0:0:0:0:1]", "http://[::1]"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),  # as browsers send it
    ],
)
def test_spellings_of_one_origin_are_one_origin(value: str, normal: str) -> None:
    assert normalise_origin(value) == normal


@pytest.mark.parametrize(
    "value",
    [
        "",
        "null",  # what a sandboxed page sends
        "app.example.com",
        "ftp://app.example.com",
        "javascript:alert(1)",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://app.example.com#top",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://app example.com",
        "http://[not-ipv6]",
        "https://" + "a" * 400,
        None,
        42,
    ],
)
def test_what_is_not_an_origin_is_none(value: object) -> None:
    assert normalise_origin(value) is None


def test_the_module_is_pure() -> None:
    """The SDK may import it only because it needs nothing but the standard library."""
    tree = ast.parse(ORIGINS.read_text())
    imported = {
        (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [node])
    }
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


@pytest.mark.parametrize(
    "spelled",
    ["https://app.example.com:443", "https://App.example.com", "https://APP.example.com/"],
)
def test_a_session_for_any_spelling_of_an_allowed_origin_creates_a_grant(
    app, client, secret_key, spelled
) -> None:
    from wattfare_demo.engine.apps import add_origin, app_for_secret_key
    from wattfare_demo.extensions import db

    with app.app_context():
        add_origin(app_for_secret_key(secret_key), ALLOWED)
        db.session.remove()
    session = Wattfare(secret_key, wsgi_app=app).create_session(origin=spelled, requests=1)
    response = client.post(
        "/api/v1/grants",
        json={"requests": 1},
        headers={"Authorization": f"Bearer {session.token}"},
    )
    assert response.status_code == 200, response.get_json()
    # And the consent page, asked with the same spelling, shows the normal one.
    page = client.get(
        "/wattfare/consent",
        query_string={
            "pk": app.config["WATTFARE_PUBLISHABLE_KEY"],
            "origin": spelled,
            "requests": 1,
            "nonce": "0123456789abcdef0123",
        },
    )
    assert page.status_code == 200
    assert f'data-opener-origin="{ALLOWED}"' in page.get_data(as_text=True)


def test_origins_added_from_the_command_line_are_normalised(app) -> None:
    from sqlalchemy import select

    from wattfare_demo.engine.models import AppOrigin
    from wattfare_demo.extensions import db

    app_id = app.config["WATTFARE_SECRET_KEY"].split("_")[2]
    runner = app.test_cli_runner()
    added = runner.invoke(args=["wattfare", "add-origin", app_id, "HTTPS://Staging.Example:443/"])
    assert added.exit_code == 0 and "Added https://staging.example." in added.output
    again = runner.invoke(args=["wattfare", "add-origin", app_id, "https://staging.example"])
    assert "was already allowed" in again.output
    with app.app_context():
        assert set(db.session.scalars(select(AppOrigin.origin))) == {
            ORIGIN,
            "https://staging.example",
        }
        db.session.remove()
