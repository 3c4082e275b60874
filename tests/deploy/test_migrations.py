"""The migrations are the schema: the release step builds it, twice is harmless, and the
models agree with it (what Alembic's autogenerate would write next is nothing).

The tests elsewhere make their tables with `create_all` for speed; this is what makes
that shortcut safe. Runs on SQLite, and on PostgreSQL with TEST_DATABASE_URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

import wattfare_demo.engine.models  # noqa: F401 - every model on db.metadata
from tests.helpers import ORIGIN
from tests.procfile import ROOT, private_schema, procfile_env, run_release
from wattfare_demo.extensions import db


def release_env(database_url: str, keys: dict[str, str], **extra: str) -> dict[str, str]:
    """What a platform sets for the release step; WATTFARE_ENV comes from the Procfile."""
    return procfile_env(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": "release-test-secret-0123456789abcdef0123456789",
            "WATTFARE_ALLOWED_ORIGINS": ORIGIN,
            **keys,
            **extra,
        }
    )


@pytest.fixture
def empty_db(database_url: str) -> Iterator[str]:
    if database_url.startswith("postgresql"):
        with private_schema(database_url) as url:
            yield url
    else:
        yield database_url  # a new SQLite file in tmp_path


def schema_diff(url: str) -> tuple[list[Any], tuple[str, ...], tuple[str, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, db.metadata)
            current = context.get_current_heads()
    finally:
        engine.dispose()
    heads = ScriptDirectory(str(ROOT / "migrations")).get_heads()
    return diff, current, tuple(heads)


def test_release_twice_builds_the_schema_the_models_describe(empty_db, keys):
    env = release_env(empty_db, keys)
    first = run_release(env)
    assert first.returncode == 0, first.stderr
    assert re.search(r"Running upgrade\s+-> \w+", first.stderr)
    second = run_release(env)  # a re-run release, or a deploy with no new migration
    assert second.returncode == 0, second.stderr
    assert "Running upgrade" not in second.stderr

    diff, current, heads = schema_diff(empty_db)
    assert diff == [], "models and migrations disagree: run `flask db migrate`"
    assert current == heads


def test_release_fails_when_the_database_is_unreachable(keys):
    closed = "postgresql://postgres@127.0.0.1:9/none?connect_timeout=2"
    result = run_release(release_env(closed, keys))
    assert result.returncode != 0  # the platform then keeps the previous release
    assert "Connection refused" in result.stderr or "connection failed" in result.stderr


def test_release_runs_as_production_unless_told_otherwise(tmp_path):
    # No keys and no SECRET_KEY: a production start refuses, so a deploy can never
    # come up on development keys by accident.
    env = procfile_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    result = run_release(env)
    assert result.returncode != 0
    assert "WATTFARE_ENV=production needs" in result.stderr


def test_no_create_all_outside_the_tests():
    sources = [ROOT / "app.py", *sorted((ROOT / "wattfare_demo").rglob("*.py"))]
    offenders = [str(p.relative_to(ROOT)) for p in sources if "create_all(" in p.read_text()]
    assert offenders == [], "the schema comes from migrations only (flask db upgrade)"
