"""The app found once per key (engine/apps.py, `calling_app`): what is cached, and the
rule by which a key that stops being valid stops working."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from wattfare_demo.engine import apps
from wattfare_demo.extensions import db


def _status(client: FlaskClient, key: str) -> int:
    return client.get("/api/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def _revoke_by_hand(app: Flask) -> None:
    """Change the stored key hash behind the engine's back, as an operator's SQL would."""
    with app.app_context():
        db.session.execute(text("UPDATE apps SET secret_hash = :h"), {"h": "0" * 64})
        db.session.commit()
        db.session.remove()


def test_a_key_changed_outside_the_engine_works_until_the_cache_forgets_it(
    app: Flask, client: FlaskClient, secret_key: str
) -> None:
    assert _status(client, secret_key) == 200
    _revoke_by_hand(app)
    # Within KEY_CACHE_SECONDS this worker still knows the key (the documented delay)…
    assert _status(client, secret_key) == 200
    # … and at once after forget_cached_keys(), as a process that changes a key calls it.
    with app.app_context():
        apps.forget_cached_keys()
    assert _status(client, secret_key) == 401


def test_an_entry_lasts_key_cache_seconds(
    app: Flask, client: FlaskClient, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps, "KEY_CACHE_SECONDS", 0.0)  # every entry is already old
    assert _status(client, secret_key) == 200
    _revoke_by_hand(app)
    assert _status(client, secret_key) == 401


def test_unknown_keys_are_not_kept(app: Flask, client: FlaskClient, secret_key: str) -> None:
    made_up = secret_key[:-4] + ("aaaa" if not secret_key.endswith("aaaa") else "bbbb")
    for _ in range(3):
        assert _status(client, made_up) == 401
    cache = app.extensions.get("wattfare_key_cache", {})
    assert all(entry.id for _, entry in cache.values())
    assert len(cache) == 0
    assert _status(client, secret_key) == 200
    assert len(app.extensions["wattfare_key_cache"]) == 1
