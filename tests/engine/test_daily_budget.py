"""The operator's backstop: a per-app ceiling on what its calls cost over a rolling day.

Held exactly like a grant's cap: a call's worst case is held on the budget when it is
reserved, settled to its real cost or released; a call that does not fit is refused with
402 `grant_invalid` / `app_budget`, reserving nothing. The window is the current hour of
the database clock and the 24 before it (app_spend rows). The race across worker
processes is in tests/engine/test_concurrency.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from tests.fake_upstream import FAKE_MODEL, ErrorReply, Reply
from tests.helpers import chat_body
from wattfare_demo.engine import grants
from wattfare_demo.engine.apps import app_for_secret_key, set_daily_budget
from wattfare_demo.engine.models import AppSpend, Usage
from wattfare_demo.engine.pricing import DEFAULT_PRICES
from wattfare_demo.extensions import db

CHAT = "/api/v1/chat/completions"
LONG_DOC = "<p>" + "word " * 300 + "</p>"
# Cut at 10 tokens: the local model always writes more, so a call costs exactly its hold.
EXACT = chat_body(LONG_DOC, max_tokens=10)


def set_budget(app: Flask, pusd: int | None) -> None:
    with app.app_context():
        set_daily_budget(app_for_secret_key(app.config["WATTFARE_SECRET_KEY"]), pusd)
        db.session.remove()


def spend(app: Flask) -> tuple[int, int]:
    """(spent, held) over the demo app's budget window."""
    with app.app_context():
        found = grants.budget_window_spend(app.config["WATTFARE_SECRET_KEY"].split("_")[2])
        db.session.remove()
    return found


@pytest.fixture
def call(client, api_headers) -> Callable[..., Any]:
    def make(grant: str, body: dict[str, Any] = EXACT, **headers: str) -> Any:
        return client.post(CHAT, headers={**api_headers(grant), **headers}, json=body)

    return make


@pytest.fixture
def exact_cost(call, make_grant) -> int:
    """What one EXACT call costs (and holds), measured before any budget is set."""
    usage = call(make_grant(1)).get_json()["usage"]
    assert usage["completion_tokens"] == 10
    return usage["prompt_tokens"] * 1_000_000 + 10 * 2_000_000


def test_calls_stop_exactly_at_the_budget(app, call, make_grant, exact_cost, capsys) -> None:
    set_budget(app, 3 * exact_cost)
    grant = make_grant(10)
    assert [call(grant).status_code for _ in range(3)] == [200, 200, 200]
    refused = call(grant)
    assert refused.status_code == 402
    error = refused.get_json()["error"]
    assert (error["code"], error["type"], error["reason"]) == (
        "grant_invalid",
        "grant_error",
        "app_budget",
    )
    assert "daily budget" in error["message"] and "Nothing was charged" in error["message"]
    assert spend(app) == (3 * exact_cost, 0)  # the ceiling, never past it
    # The refusal took nothing from the grant, and another grant is refused alike.
    assert call(make_grant(1)).get_json()["error"]["reason"] == "app_budget"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Usage)) == 1 + 3
        db.session.remove()
    assert "outcome=refused:app_budget" in capsys.readouterr().out


def test_a_call_is_held_at_its_worst_case_and_settled_to_its_real_cost(
    app, call, make_grant, exact_cost
) -> None:
    # Room for one worst case (max_tokens 1000) and not two: the first call's hold fills
    # the budget while it runs, and its settlement gives back what it did not use.
    price = DEFAULT_PRICES["local/markdown"]
    short = chat_body("<h1>Hi</h1>", max_tokens=1000)
    prompt = call(make_grant(1), chat_body("<h1>Hi</h1>")).get_json()["usage"]["prompt_tokens"]
    worst = price.cost_pusd(prompt, 1000)
    set_budget(app, worst + worst // 2)
    grant = make_grant(5)
    first = call(grant, short)
    assert first.status_code == 200
    real = price.cost_pusd(prompt, first.get_json()["usage"]["completion_tokens"])
    assert real < worst // 2
    assert spend(app) == (real, 0)
    assert call(grant, short).status_code == 200  # the room the first one gave back
    assert spend(app) == (2 * real, 0)


def test_a_failed_call_gives_its_hold_back(
    app_config, secret_key, upstream, upstream_config
) -> None:
    from decimal import Decimal

    from tests.helpers import mint_session
    from wattfare_demo import create_app
    from wattfare_demo.engine import ensure_configured_app
    from wattfare_demo.engine.pricing import usd_to_pusd

    served = create_app({**app_config, **upstream_config, "WATTFARE_DAILY_BUDGET_USD": "1"})
    ensure_configured_app(served)
    client = served.test_client()
    grant = client.post(
        "/api/v1/grants",
        json={"requests": 5},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    ).get_json()["grantToken"]
    headers = {"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant}
    body = {**chat_body(), "model": FAKE_MODEL, "max_tokens": 50}
    upstream.respond(ErrorReply(status=500), Reply(usage=(7, 3)))
    assert client.post(CHAT, headers=headers, json=body).status_code == 502
    assert spend(served) == (0, 0)  # released: the budget has it all again
    assert client.post(CHAT, headers=headers, json=body).status_code == 200
    assert spend(served) == (7 * 10**6 + 3 * 2 * 10**6, 0)  # $1 / $2 per million tokens
    with served.app_context():
        app_row = app_for_secret_key(secret_key)
        assert app_row.daily_budget_pusd == usd_to_pusd(Decimal(1))
        db.session.remove()
        db.engine.dispose()


def test_a_crashed_calls_hold_is_released_when_the_budget_refuses(
    app, call, make_grant, exact_cost, secret_key
) -> None:
    set_budget(app, exact_cost)
    app_id = secret_key.split("_")[2]
    grant = make_grant(5)
    price = DEFAULT_PRICES["local/markdown"]
    with app.app_context():
        # A worker died mid-call: its hold (stale at once) fills the whole budget.
        crashed = grants.reserve(
            app_id, grant, model="local/markdown", price=price, prompt_tokens=0,
            max_tokens=exact_cost // price.output_micro_per_m, hold_ttl=-1,
        )  # fmt: skip
        db.session.remove()
    # What is left of the budget beside that hold cannot pay for a call.
    assert spend(app) == (0, crashed.hold_pusd) and exact_cost - crashed.hold_pusd < exact_cost
    # Refused by the budget, the engine first releases what nobody will settle.
    assert call(grant).status_code == 200
    assert spend(app) == (exact_cost, 0)
    with app.app_context():
        assert db.session.get(Usage, crashed.usage_id).status == "expired"
        db.session.remove()


def test_the_window_is_a_rolling_day(app, call, make_grant, exact_cost, secret_key) -> None:
    set_budget(app, 2 * exact_cost)
    grant = make_grant(10)
    assert [call(grant).status_code for _ in range(3)] == [200, 200, 402]
    app_id = secret_key.split("_")[2]

    def age_spending(hours: int) -> None:
        with app.app_context():
            db.session.execute(
                update(AppSpend).where(AppSpend.app_id == app_id).values(hour=AppSpend.hour - hours)
            )
            db.session.commit()
            db.session.remove()

    age_spending(24)  # 24 hours ago: still inside the day
    assert call(grant).get_json()["error"]["reason"] == "app_budget"
    age_spending(1)  # 25 hours ago: out of it
    assert spend(app) == (0, 0)
    assert [call(grant).status_code for _ in range(3)] == [200, 200, 402]
    # The sweep drops the rows that left the window; the current one stays.
    result = app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    assert "Dropped 1 hourly budget row(s) older than a day." in result.output
    assert spend(app) == (2 * exact_cost, 0)


def test_a_budget_counts_from_when_it_is_set_and_off_lifts_it(
    app, call, make_grant, exact_cost
) -> None:
    grant = make_grant(10)
    assert call(grant).status_code == 200  # no budget: not counted anywhere
    assert spend(app) == (0, 0)
    set_budget(app, exact_cost)
    assert [call(grant).status_code for _ in range(2)] == [200, 402]
    set_budget(app, None)
    assert call(grant).status_code == 200
    set_budget(app, 0)  # a budget of nothing: every priced call is refused
    assert call(grant).status_code == 402


def test_a_replayed_answer_costs_the_budget_nothing(app, call, make_grant, exact_cost) -> None:
    set_budget(app, exact_cost)
    grant = make_grant(3)
    first = call(grant, EXACT, **{"Idempotency-Key": "k-1"})
    again = call(grant, EXACT, **{"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert spend(app) == (exact_cost, 0)


def test_a_stream_is_held_and_settled_too(app, call, make_grant, exact_cost) -> None:
    set_budget(app, exact_cost)
    grant = make_grant(3)
    streamed = call(grant, {**EXACT, "stream": True})
    assert b"[DONE]" in streamed.get_data()
    assert spend(app) == (exact_cost, 0)
    assert call(grant, {**EXACT, "stream": True}).status_code == 402


def test_the_converter_page_says_the_demo_is_resting(app, client, make_grant) -> None:
    set_budget(app, 0)
    response = client.post(
        "/api/convert",
        data={
            "file": (io.BytesIO(b"<h1>Hi</h1>"), "a.html"),
            "grantToken": make_grant(1),
        },
        headers={"HX-Request": "true", "Origin": "http://localhost"},
        content_type="multipart/form-data",
    )
    # The page's stream of parts ends with the refusal, in words for the visitor.
    page = response.get_data(as_text=True)
    assert "event: done" in page
    assert "The demo is resting for today" in page
    assert "come back tomorrow" in page


# --- flask wattfare set-budget ---------------------------------------------------------------


def test_set_budget_from_the_command_line(app, make_grant, call) -> None:
    runner = app.test_cli_runner()
    app_id = app.config["WATTFARE_SECRET_KEY"].split("_")[2]
    result = runner.invoke(args=["wattfare", "set-budget", app_id, "12.50"])
    assert result.exit_code == 0, result.output
    assert "$12.5 a day" in result.output and "Spent in the last 24 hours: $0" in result.output
    with app.app_context():
        assert app_for_secret_key(app.config["WATTFARE_SECRET_KEY"]).daily_budget_pusd == (
            12_500_000_000_000
        )
        db.session.remove()
    listed = runner.invoke(args=["wattfare", "list-apps"])
    assert "$12.5 a day" in listed.output
    assert "no daily budget" in runner.invoke(args=["wattfare", "set-budget", app_id, "off"]).output
    for bad in ("-1", "lots", "NaN", "2000000"):
        refused = runner.invoke(args=["wattfare", "set-budget", app_id, "--", bad])
        assert refused.exit_code == 2 and "not a daily budget" in refused.output, bad
    missing = runner.invoke(args=["wattfare", "set-budget", "0123456789abcdef", "5"])
    assert missing.exit_code == 1 and "No app" in missing.output
