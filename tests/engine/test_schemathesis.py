"""Schemathesis fuzzes /api/v1 from its own OpenAPI document: no 5xx, nothing off-contract.

Every operation of /api/v1/openapi.json gets generated calls, valid and invalid (the
examples, coverage and fuzzing phases), through the real app over WSGI. Each answer must
not be a 5xx, must have a documented status, content type, headers and body, and an
invalid request must be refused with a 4xx.

About half the calls carry real credentials, so they get past 401: a fresh session JWT,
the app's secret key and a fresh grant token (grants are made through the API itself).
Half of the valid chat and responses bodies name `local/markdown`, so some calls really
run and are metered; the rest meet 400 model_not_found, 402 and so on, which are documented too.

Bounded for CI: FUZZ_EXAMPLES examples per operation and a fixed seed, well under a
minute. For a longer, random hunt:

    WATTFARE_FUZZ_EXAMPLES=500 WATTFARE_FUZZ_SEED=random \
        .venv/bin/pytest tests/engine/test_schemathesis.py
"""

from __future__ import annotations

import collections
import itertools
import os
import random
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation

from tests.helpers import mint_session
from wattfare_demo.engine import openapi

FUZZ_EXAMPLES = int(os.environ.get("WATTFARE_FUZZ_EXAMPLES", "25"))
_seed = os.environ.get("WATTFARE_FUZZ_SEED", "20240601")
FUZZ_SEED = random.randrange(2**32) if _seed == "random" else int(_seed)

# What "no 5xx and nothing outside the schema" means, check by check. Left out on purpose:
# positive_data_acceptance (a valid body on a used-up grant is rightly a 402) and the
# stateful / resource checks (the API has no resources to create and fetch back).
CHECKS = {
    "not_a_server_error": {"enabled": True},
    "status_code_conformance": {"enabled": True},
    "content_type_conformance": {"enabled": True},
    "response_headers_conformance": {"enabled": True},
    "response_schema_conformance": {"enabled": True},
    "negative_data_rejection": {"enabled": True},
    "missing_required_header": {"enabled": True},
    "unsupported_method": {"enabled": True},
    "allow_header_conformance": {"enabled": True},
}


# (method, path) -> statuses seen, for test_fuzzing_got_past_authentication below.
SEEN: collections.defaultdict[tuple[str, str], set[int]] = collections.defaultdict(set)


def fuzz_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": FUZZ_SEED,
            "generation": {"mode": "all", "max-examples": FUZZ_EXAMPLES, "database": "none"},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **CHECKS},
        }
    )


# Loaded from the checked-in file at collection, one test per operation; each call goes
# to the test's own app over WSGI (`app=`), and tests/engine/test_openapi.py checks that the
# route serves this very file.
schema = schemathesis.openapi.from_path(openapi.PATH, config=fuzz_config())


class Credentials:
    """Real credentials for a generated call: a session, the secret key, a fresh grant."""

    def __init__(self, client: FlaskClient, secret_key: str) -> None:
        self.client = client
        self.secret_key = secret_key
        self.turns = itertools.count()
        self.handed_out = 0
        self.current_grant = ""

    def session(self) -> str:
        return f"Bearer {mint_session(self.secret_key)}"

    def grant(self) -> str:
        """A 2-request grant, handed out three times: the third call finds it used up."""
        if self.handed_out % 3 == 0:
            response = self.client.post(
                "/api/v1/grants", json={"requests": 2}, headers={"Authorization": self.session()}
            )
            assert response.status_code == 200, response.get_json()
            self.current_grant = response.get_json()["grantToken"]
        self.handed_out += 1
        return self.current_grant

    def apply(self, case: Any) -> None:
        """Swap generated credentials for real ones, where that keeps the case's intent.

        A header the case left out stays out (the coverage phase drops required headers
        on purpose), and a case whose headers are the invalid part keeps them.
        """
        headers = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
        if headers is not None and headers.mode == schemathesis.GenerationMode.NEGATIVE:
            return
        if case.path == "/grants":
            real = {"Authorization": self.session}
        else:
            real = {
                "Authorization": lambda: f"Bearer {self.secret_key}",
                "x-wattfare-grant": self.grant,
            }
        for name, value in real.items():
            if name in case.headers:
                case.headers[name] = value()


@pytest.fixture
def credentials(client: FlaskClient, secret_key: str) -> Credentials:
    return Credentials(client, secret_key)


@schema.parametrize()
# One app (and database) per operation, shared by its examples on purpose: grants get
# used up along the way, as they do in real life. No deadline: PostgreSQL calls vary.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_api_keeps_to_its_document(case: Any, app: Flask, credentials: Credentials) -> None:
    # Cycle through the four mixes of (real credentials?, local model?) call by call:
    # `@schema.given` cannot draw them, as it does not combine with the examples phase.
    turn = next(credentials.turns)
    if turn & 1:
        credentials.apply(case)
    if (
        turn & 2
        # Only on valid data: a changed negative case would no longer be invalid.
        and case.meta is not None
        and case.meta.generation.mode == "positive"
        and case.path in ("/chat/completions", "/responses")
        and isinstance(case.body, dict)
        and isinstance(case.body.get("model"), str)
    ):
        case.body["model"] = "local/markdown"
    response = case.call_and_validate(app=app)
    SEEN[(case.method, case.path)].add(response.status_code)


def test_fuzzing_got_past_authentication() -> None:
    """The real credentials worked: every authenticated operation answered 200 at times."""
    if not SEEN:
        pytest.skip("runs after test_api_keeps_to_its_document, in the same session")
    for operation in [
        ("POST", "/grants"),
        ("POST", "/chat/completions"),
        ("POST", "/responses"),
        ("GET", "/grant"),
    ]:
        assert 200 in SEEN[operation], (operation, SEEN[operation])
    assert 401 in SEEN[("GET", "/models")] and 200 in SEEN[("GET", "/models")]
