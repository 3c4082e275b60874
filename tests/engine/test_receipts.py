"""The receipt page: what it lists, its headers, its fragment for htmx polling, Revoke
(same-origin POST with the capability in the body) and the page for a bad link."""

from __future__ import annotations

import re
from typing import Any

import pytest
from bs4 import BeautifulSoup

from tests.helpers import chat_body, mint_session

ENGINE = "http://localhost"  # the test client's origin


def new_grant(client, secret_key: str, requests: int = 3, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/grants",
        json={"requests": requests, **body},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def path_of(url: str) -> str:
    return url.removeprefix(ENGINE)


def capability_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def rows(html: str) -> list[dict[str, str]]:
    table = BeautifulSoup(html, "html.parser").select("[data-receipt-calls] tbody tr")
    keys = ("time", "model", "in", "out", "cost", "outcome")
    return [
        dict(zip(keys, (td.get_text(strip=True) for td in tr.find_all("td")), strict=True))
        for tr in table
    ]


def text_of(html: str, selector: str) -> str:
    found = BeautifulSoup(html, "html.parser").select_one(selector)
    assert found is not None, selector
    return found.get_text(" ", strip=True)


def test_the_receipt_lists_each_call_and_what_is_left(client, secret_key, api_headers):
    grant = new_grant(client, secret_key, 3, maxUsd=1)
    page = client.get(path_of(grant["receiptUrl"]))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert rows(html) == []
    assert "No calls yet" in html
    assert text_of(html, "[data-receipt-remaining]") == "3"

    headers = api_headers(grant["grantToken"])
    call = client.post("/api/v1/chat/completions", headers=headers, json=chat_body()).get_json()
    html = client.get(path_of(grant["receiptUrl"])).get_data(as_text=True)
    [row] = rows(html)
    usage = call["usage"]
    assert row["model"] == "local/markdown"
    assert (row["in"], row["out"]) == (str(usage["prompt_tokens"]), str(usage["completion_tokens"]))
    # local/markdown: $1 per million tokens in, $2 out; every digit shown.
    cost = (usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1_000_000
    assert row["cost"] == f"${cost:f}".rstrip("0")
    assert row["outcome"] == "settled"
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC", row["time"])
    assert text_of(html, "[data-receipt-remaining]") == "2"
    assert "of at most $1.00" in text_of(html, "[data-receipt-spent]")
    assert text_of(html, "[data-receipt-status]") == "Active"


def test_a_stream_cut_at_the_cap_says_so(client, secret_key, api_headers):
    doc = "<p>" + "word " * 200 + "</p>"
    grant = new_grant(client, secret_key, 2, maxUsd=0.0005)
    response = client.post(
        "/api/v1/chat/completions",
        headers=api_headers(grant["grantToken"]),
        json=chat_body(doc, stream=True),
    )
    assert b'"over_cap"' in response.get_data()
    [row] = rows(client.get(path_of(grant["receiptUrl"])).get_data(as_text=True))
    assert row["outcome"] == "cut at cap"


def test_a_released_call_costs_nothing_on_the_receipt(app, client, secret_key, api_headers):
    from sqlalchemy import update

    from wattfare_demo.engine.models import Usage
    from wattfare_demo.extensions import db

    grant = new_grant(client, secret_key)
    client.post(
        "/api/v1/chat/completions", headers=api_headers(grant["grantToken"]), json=chat_body()
    )
    with app.app_context():  # as release() leaves a call whose provider failed
        db.session.execute(
            update(Usage).values(status="failed", cost_pusd=0, error="upstream_error")
        )
        db.session.commit()
        db.session.remove()
    [row] = rows(client.get(path_of(grant["receiptUrl"])).get_data(as_text=True))
    assert (row["outcome"], row["cost"]) == ("released", "$0.00")


def test_the_page_is_private_unframeable_and_serves_its_fragment(client, secret_key):
    grant = new_grant(client, secret_key)
    path = path_of(grant["receiptUrl"])
    page = client.get(path)
    headers = page.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "noindex" in headers["X-Robots-Tag"]
    assert "HX-Request" in headers["Vary"]
    html = page.get_data(as_text=True)
    assert '<meta name="robots" content="noindex, nofollow">' in html
    assert '<meta name="referrer" content="no-referrer">' in html
    assert "<!doctype html>" in html
    # The engine's own htmx, not the demo's.
    assert "/wattfare/static/vendor/htmx-2.0.11/htmx.min.js" in html

    fragment = client.get(path, headers={"HX-Request": "true"})
    body = fragment.get_data(as_text=True)
    assert fragment.status_code == 200 and "<html" not in body
    section = BeautifulSoup(body, "html.parser").select_one("section#receipt")
    # Active: it polls itself.
    assert section["hx-get"] == path and section["hx-trigger"] == "every 1s"
    assert "HX-Request" in fragment.headers["Vary"]


def test_revoke_on_the_receipt_ends_the_grant_and_the_polling(client, secret_key, api_headers):
    grant = new_grant(client, secret_key)
    capability = capability_of(grant["receiptUrl"])
    response = client.post(
        "/wattfare/receipt/revoke",
        data={"receipt": capability},
        headers={"Origin": ENGINE, "HX-Request": "true"},
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    section = BeautifulSoup(html, "html.parser").select_one("section#receipt")
    assert section["data-status"] == "revoked" and not section.has_attr("hx-get")
    assert "Revoked: no further calls" in html
    refused = client.post(
        "/api/v1/chat/completions", headers=api_headers(grant["grantToken"]), json=chat_body()
    )
    assert refused.get_json()["error"]["reason"] == "revoked"


def test_revoke_without_javascript_goes_back_to_the_page(client, secret_key):
    grant = new_grant(client, secret_key)
    response = client.post(
        "/wattfare/receipt/revoke",
        data={"receipt": capability_of(grant["receiptUrl"])},
        headers={"Origin": ENGINE},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == path_of(grant["receiptUrl"])
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert text_of(page, "[data-receipt-status]") == "Revoked"


@pytest.mark.parametrize("origin", [None, "https://evil.example", "null", "http://localhost:5000"])
def test_revoke_from_another_origin_is_refused(client, secret_key, api_headers, origin):
    grant = new_grant(client, secret_key)
    headers = {} if origin is None else {"Origin": origin}
    response = client.post(
        "/wattfare/receipt/revoke",
        data={"receipt": capability_of(grant["receiptUrl"])},
        headers=headers,
    )
    assert response.status_code == 403
    assert "nothing was revoked" in response.get_data(as_text=True)
    status = client.get("/api/v1/grant", headers=api_headers(grant["grantToken"])).get_json()
    assert status["status"] == "active"


def test_revoke_is_never_a_get(client, secret_key):
    grant = new_grant(client, secret_key)
    capability = capability_of(grant["receiptUrl"])
    assert client.get(f"/wattfare/receipt/revoke?receipt={capability}").status_code in (404, 405)


@pytest.mark.parametrize(
    "capability",
    ["wfr_nope", "wfr_" + "0" * 36, "x" * 5000, "wfg_" + "0" * 36, "%00"],
)
def test_a_bad_link_is_a_readable_404_page(client, capability):
    response = client.get(f"/wattfare/receipt/{capability}")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "This receipt link does not open anything" in html
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
