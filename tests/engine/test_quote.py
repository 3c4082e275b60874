"""The quote before Approve (quote.py): exact integer bounds from the price table and the
hold rules, and how the consent page says it for live and test apps."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from bs4 import BeautifulSoup

from tests.helpers import ORIGIN
from wattfare_demo.engine.apps import create_app_record
from wattfare_demo.engine.pricing import DEFAULT_PRICES, Price
from wattfare_demo.engine.quote import (
    MAX_PROMPT_TOKENS,
    quote,
    round_up_to_cent,
    worst_call_pusd,
)
from wattfare_demo.engine.validation import MAX_OUTPUT_TOKENS
from wattfare_demo.extensions import db

NONCE = "0123456789abcdef0123456789abcdef"
MINI = "openai/gpt-4o-mini"


def test_one_call_costs_at_most_its_largest_hold() -> None:
    price = DEFAULT_PRICES[MINI]  # $0.15 / $0.60 per million tokens
    worst = worst_call_pusd(price)
    assert worst == MAX_PROMPT_TOKENS * 150_000 + MAX_OUTPUT_TOKENS * 600_000
    # The engine's body limit and output limit bound it: about $0.92 for this model.
    assert 900_000_000_000 < worst < 930_000_000_000


def test_the_bound_is_the_calls_or_the_cap_whichever_is_lower() -> None:
    price = Price(1_000_000, 2_000_000)
    three = quote(3, None, "m", price)
    assert (three.most_pusd, three.capped) == (3 * worst_call_pusd(price), False)
    capped = quote(3, 500_000_000_000, "m", price)  # $0.50
    assert (capped.most_pusd, capped.capped) == (500_000_000_000, True)
    above = quote(1, 10**15, "m", price)  # a cap above the worst case bounds nothing
    assert (above.most_pusd, above.capped) == (worst_call_pusd(price), False)


def test_without_a_model_only_a_cap_bounds_the_grant() -> None:
    assert quote(3, None, None, None).most_pusd is None
    assert quote(3, 10**11, None, None).most_pusd == 10**11


@pytest.mark.parametrize(
    ("pusd", "rounded"),
    [(1, 10**10), (10**10, 10**10), (10**10 + 1, 2 * 10**10), (0, 0)],
)
def test_a_shown_bound_is_rounded_up_never_down(pusd: int, rounded: int) -> None:
    assert round_up_to_cent(pusd) == rounded


# --- the consent page ----------------------------------------------------------------------


def make_app(app, mode: str) -> str:
    with app.app_context():
        created = create_app_record(f"{mode} app", mode, [ORIGIN], app.config["SECRET_KEY"])
        pk = created.app.publishable_key
        db.session.remove()
    return pk


def popup(client, pk: str, **params: Any) -> BeautifulSoup:
    query = {"pk": pk, "origin": ORIGIN, "nonce": NONCE, "requests": 3, **params}
    response = client.get("/wattfare/consent?" + urlencode(query))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def text(page: BeautifulSoup, selector: str) -> str:
    found = page.select_one(selector)
    assert found is not None, selector
    return " ".join(found.get_text(" ", strip=True).split())


def test_a_live_popup_names_the_model_and_quotes_the_most_it_can_cost(app, client):
    page = popup(client, make_app(app, "live"), model="local/markdown")
    assert text(page, "#model") == "local/markdown only"
    worst = 3 * worst_call_pusd(DEFAULT_PRICES["local/markdown"])
    dollars = round_up_to_cent(worst) // 10**10
    expected = f"${dollars // 100:,}.{dollars % 100:02d}"
    assert text(page, "#quote") == (
        f"At most {expected} for 3 requests (local/markdown), even if every call is the "
        "largest allowed."
    )
    assert "Test mode" not in page.get_text()
    assert page.body["data-model"] == "local/markdown"
    assert page.body["data-grant-body"] == '{"requests": 3, "model": "local/markdown"}'


def test_a_lower_cap_is_the_quote(app, client):
    page = popup(client, make_app(app, "live"), model="local/markdown", maxUsd="0.5")
    assert text(page, "#quote") == "At most $0.50 for 3 requests (local/markdown): the cap."


def test_a_live_grant_for_any_model_without_a_cap_says_there_is_no_bound(app, client):
    page = popup(client, make_app(app, "live"))
    assert text(page, "#model") == "Any model the app picks"
    assert text(page, "#quote").startswith("No upper bound worth showing: 3 requests on any")


def test_a_test_app_still_says_nobody_is_charged(app, client):
    page = popup(client, app.config["WATTFARE_PUBLISHABLE_KEY"], model="local/markdown")
    assert text(page, ".badge") == "Test mode: nobody is charged"
    assert text(page, "#quote").endswith("In test mode nobody is charged.")


def test_a_model_the_engine_cannot_serve_is_an_error_page(app, client):
    query = {"pk": app.config["WATTFARE_PUBLISHABLE_KEY"], "origin": ORIGIN, "nonce": NONCE}
    response = client.get(
        "/wattfare/consent?" + urlencode({**query, "requests": 1, "model": "openai/gpt-4o"})
    )
    assert response.status_code == 400
    page = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    assert page.body["data-error-code"] == "model_not_found"
    assert page.body["data-error-param"] == "model"
