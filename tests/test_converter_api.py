"""The converter's two API routes through the Flask test client, against the real engine.

/api/wattfare-token: a session token for the page's own origin, refused to anyone else.
/api/convert: the seed's JSON ({grantToken, file} -> {result}) and the htmx form
(multipart -> fragment); bad files are refused before the grant is touched, so they cost
nothing, which each test checks through the engine's own GET /api/v1/grant.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import docx
import pytest
from flask.testing import FlaskClient

from tests.helpers import ORIGIN
from tests.test_extract import make_pdf, text_stream
from wattfare_demo.converter.extract import MAX_UPLOAD_BYTES

HTML = (
    "<html><head><title>t</title><script>window.pwned = 1</script></head><body>"
    "<h1>Quarterly report</h1><p>All <b>good</b>.</p>"
    "<ul><li>Solar</li><li>Wind</li></ul>"
    "<table><tr><th>Source</th><th>MWh</th></tr><tr><td>Solar</td><td>12</td></tr></table>"
    "</body></html>"
)
CSV = "city,country\nParis,France\nLima,Peru\n"
HTMX = {"HX-Request": "true", "Origin": "http://localhost"}


@pytest.fixture
def grant_status(client: FlaskClient, api_headers):
    """grant_status(token) -> the engine's view of the grant (requests, remaining, spentUsd)."""

    def status(token: str) -> dict[str, Any]:
        response = client.get("/api/v1/grant", headers=api_headers(token))
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return status


def convert_json(client: FlaskClient, token: str | None, file: Any, **headers: str):
    body: dict[str, Any] = {"file": file}
    if token is not None:
        body["grantToken"] = token
    return client.post("/api/convert", json=body, headers=headers)


def convert_form(client: FlaskClient, token: str | None, name: str, data: bytes):
    form: dict[str, Any] = {"file": (io.BytesIO(data), name), "requests": "3"}
    if token is not None:
        form["grantToken"] = token
    return client.post("/api/convert", data=form, headers=HTMX, content_type="multipart/form-data")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def docx_bytes() -> bytes:
    document = docx.Document()
    document.add_heading("Minutes", level=1)
    document.add_paragraph("Tea", style="List Bullet")
    document.add_paragraph("Biscuits", style="List Bullet")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# --- /api/wattfare-token ------------------------------------------------------------------


def test_token_is_minted_for_the_pages_origin_and_creates_grants(client: FlaskClient) -> None:
    response = client.post(
        "/api/wattfare-token", base_url=ORIGIN, headers={"Origin": ORIGIN}, json={"requests": 2}
    )

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"token", "expiresAt"}
    assert isinstance(body["expiresAt"], int)
    # It is a real session token: the consent popup's call with it creates a grant.
    grant = client.post(
        "/api/v1/grants",
        json={"requests": 2},
        headers={"Authorization": f"Bearer {body['token']}"},
    )
    assert grant.status_code == 200, grant.get_json()
    assert grant.get_json()["requests"] == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "null"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://localhost:5001"},
        {"Origin": "https://localhost:5000"},
    ],
    ids=["missing", "null", "foreign", "other-port", "other-scheme"],
)
def test_token_is_refused_to_other_origins(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.post("/api/wattfare-token", base_url=ORIGIN, headers=headers)

    assert response.status_code == 403
    body = response.get_json()
    assert body["error"] == "origin_not_allowed"
    assert ORIGIN in body["message"]


def test_token_needs_post(client: FlaskClient) -> None:
    response = client.get("/api/wattfare-token", headers={"Origin": "http://localhost"})

    assert response.status_code == 405


# --- /api/convert: JSON --------------------------------------------------------------------


def test_json_html_file_becomes_markdown_and_uses_one_request(
    client: FlaskClient, make_grant, grant_status
) -> None:
    token = make_grant(requests=2)

    response = convert_json(client, token, {"name": "report.html", "content": HTML})

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    result = body["result"]
    assert "# Quarterly report" in result
    assert "- Solar" in result and "- Wind" in result
    assert "| Source | MWh |" in result
    assert "pwned" not in result  # the model drops <script>
    assert body["remaining"] == 1
    assert body["filename"] == "report.html"
    assert body["finishReason"] == "stop"
    assert grant_status(token)["remaining"] == 1


def test_json_file_may_be_plain_text_as_in_the_seed(client: FlaskClient, make_grant) -> None:
    response = convert_json(client, make_grant(), CSV)

    assert response.status_code == 200
    assert "| city | country |" in response.get_json()["result"]
    assert "| Lima | Peru |" in response.get_json()["result"]


def test_json_binary_files_come_base64(client: FlaskClient, make_grant) -> None:
    token = make_grant(requests=2)
    document = {"name": "minutes.docx", "content": b64(docx_bytes()), "encoding": "base64"}
    pdf = make_pdf(text_stream("Hello from a PDF"))
    pdf_file = {"name": "hello.pdf", "content": b64(pdf), "encoding": "base64"}

    from_docx = convert_json(client, token, document)
    from_pdf = convert_json(client, token, pdf_file)

    assert from_docx.status_code == 200, from_docx.get_json()
    assert "# Minutes" in from_docx.get_json()["result"]
    assert "- Tea" in from_docx.get_json()["result"]
    assert from_pdf.status_code == 200, from_pdf.get_json()
    assert "Hello from a PDF" in from_pdf.get_json()["result"]
    assert from_pdf.get_json()["remaining"] == 0


def test_used_up_grant_is_402_grant_used(client: FlaskClient, make_grant) -> None:
    token = make_grant(requests=1)
    assert convert_json(client, token, "first").status_code == 200

    response = convert_json(client, token, "second")

    assert response.status_code == 402
    body = response.get_json()
    assert body["error"] == "grant_used"
    assert body["reason"] == "exhausted"
    assert "new grant" in body["message"]


@pytest.mark.parametrize("token", ["wfg_" + "x" * 40, "not a token", "x" * 300])
def test_unknown_or_malformed_grant_is_402(client: FlaskClient, token: str) -> None:
    response = convert_json(client, token, "hello")

    assert response.status_code == 402
    assert response.get_json()["error"] == "grant_used"


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_grant_is_400(client: FlaskClient, token: str | None) -> None:
    response = convert_json(client, token, "hello")

    assert response.status_code == 400
    assert response.get_json()["error"] == "grant_required"


@pytest.mark.parametrize(
    ("file", "status", "code"),
    [
        ({"name": "empty.txt", "content": ""}, 400, "empty_file"),
        ({"name": "blank.md", "content": "  \n\t"}, 400, "empty_file"),
        ({"name": "big.txt", "content": "a" * (MAX_UPLOAD_BYTES + 1)}, 413, "file_too_large"),
        ({"name": "long.txt", "content": "word " * 50_000}, 413, "text_too_long"),
        ({"name": "setup.exe", "content": "MZ"}, 415, "unsupported_type"),
        ({"name": "data.json", "content": "{oops"}, 422, "unreadable_file"),
        ({"name": "scan.pdf", "content": "bm90IGEgcGRm", "encoding": "base64"}, 422,
         "unreadable_file"),
        ({"name": "a.docx", "content": "UEsDBA==", "encoding": "base64"}, 422, "unreadable_file"),
    ],
    ids=["empty", "blank", "over-2MB", "too-long", "exe", "bad-json", "bad-pdf", "bad-docx"],
)  # fmt: skip
def test_bad_files_are_refused_before_the_grant_is_touched(
    client: FlaskClient, make_grant, grant_status, file: dict[str, str], status: int, code: str
) -> None:
    token = make_grant(requests=1)

    response = convert_json(client, token, file)

    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == code
    assert body["message"]  # a sentence for a person
    after = grant_status(token)
    assert after["remaining"] == 1
    assert after["spentUsd"] == 0


@pytest.mark.parametrize(
    "body",
    [[1, 2], "text", {"grantToken": 5, "file": "x"}, {"grantToken": "t"},
     {"file": {"name": 3, "content": "x"}}, {"file": {"content": "!!", "encoding": "base64"}},
     {"file": {"content": "x", "encoding": "rot13"}}],
)  # fmt: skip
def test_malformed_json_is_400(client: FlaskClient, body: Any) -> None:
    response = client.post("/api/convert", json=body)

    assert response.status_code == 400
    assert response.get_json()["error"] in {"invalid_json", "file_required"}


@pytest.mark.parametrize(
    "raw",
    ['{"grantToken": "wfg_x", "file": "\\ud800"}',
     '{"grantToken": "wfg_x", "file": {"name": "a.txt", "content": "x\\udfff"}}'],
)  # fmt: skip
def test_text_that_is_not_unicode_is_400(client: FlaskClient, raw: str) -> None:
    response = client.post("/api/convert", data=raw, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_json"


def test_body_that_is_not_json_is_400(client: FlaskClient) -> None:
    response = client.post("/api/convert", data="{nope", content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_json"


def test_other_content_types_are_415(client: FlaskClient) -> None:
    response = client.post("/api/convert", data="hello", content_type="text/plain")

    assert response.status_code == 415
    assert response.get_json()["error"] == "unsupported_content_type"


def test_huge_body_is_413_json_not_an_html_page(client: FlaskClient) -> None:
    body = json.dumps({"grantToken": "wfg_x", "file": "a" * (5 * 1024 * 1024)})

    response = client.post("/api/convert", data=body, content_type="application/json")

    assert response.status_code == 413
    assert response.get_json()["error"] == "file_too_large"


def test_cross_origin_posts_are_refused(client: FlaskClient, make_grant, grant_status) -> None:
    token = make_grant(requests=1)

    response = convert_json(client, token, "hello", Origin="https://evil.example")

    assert response.status_code == 403
    assert response.get_json()["error"] == "origin_not_allowed"
    assert grant_status(token)["remaining"] == 1


def test_json_answers_vary_on_hx_request(client: FlaskClient, make_grant) -> None:
    response = convert_json(client, make_grant(), "hello")

    assert response.headers["Vary"] == "HX-Request"
    assert response.mimetype == "application/json"


# --- /api/convert: the htmx form -----------------------------------------------------------


def test_form_answers_with_a_result_fragment(client: FlaskClient, make_grant) -> None:
    token = make_grant(requests=3)

    response = convert_form(client, token, "report.html", HTML.encode())

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Vary"] == "HX-Request"
    page = response.get_data(as_text=True)
    assert not page.lstrip().startswith("<!doctype")  # a fragment, not a page
    assert "<h1>Quarterly report</h1>" in page  # the preview
    assert "<li>Solar</li>" in page
    assert "<th>Source</th>" in page
    assert "# Quarterly report" in page  # the raw Markdown
    assert "2 requests remaining" in page
    assert 'download="report.md"' in page
    assert "data:text/markdown;charset=utf-8;base64," in page
    assert "pwned" not in page
    trigger = json.loads(response.headers["HX-Trigger"])
    assert trigger == {"wattfare:grant": {"remaining": 2, "remainingUsd": None}}


def test_form_result_shows_the_cap_left(client: FlaskClient, make_grant) -> None:
    response = convert_form(client, make_grant(requests=1, max_usd=0.5), "a.csv", CSV.encode())

    page = response.get_data(as_text=True)
    assert "0 requests remaining" in page
    assert "left under the cap" in page
    assert json.loads(response.headers["HX-Trigger"])["wattfare:grant"]["remaining"] == 0


def test_form_without_a_file_is_a_readable_error(client: FlaskClient, make_grant) -> None:
    response = client.post(
        "/api/convert",
        data={"grantToken": make_grant()},
        headers=HTMX,
        content_type="multipart/form-data",
    )

    assert response.status_code == 400
    assert "Choose a file" in response.get_data(as_text=True)


def test_form_bad_file_is_an_error_fragment_and_costs_nothing(
    client: FlaskClient, make_grant, grant_status
) -> None:
    token = make_grant(requests=2)

    response = convert_form(client, token, "photo.png", b"\x89PNG....")

    assert response.status_code == 415
    page = response.get_data(as_text=True)
    assert 'role="alert"' in page
    assert "Unsupported file type" in page
    assert "photo.png is not a supported file type" in page
    assert "HX-Trigger" not in response.headers  # the page keeps its grant
    assert grant_status(token)["remaining"] == 2


def test_form_oversize_file_is_413(client: FlaskClient, make_grant, grant_status) -> None:
    token = make_grant(requests=1)

    response = convert_form(client, token, "big.csv", b"a,b\n" * (MAX_UPLOAD_BYTES // 4 + 1))

    assert response.status_code == 413
    assert "This file is too large" in response.get_data(as_text=True)
    assert grant_status(token)["spentUsd"] == 0


def test_form_used_up_grant_offers_a_new_one(client: FlaskClient, make_grant) -> None:
    token = make_grant(requests=1)
    assert convert_form(client, token, "a.txt", b"one").status_code == 200

    response = convert_form(client, token, "b.txt", b"two")

    assert response.status_code == 402
    page = response.get_data(as_text=True)
    assert "Grant used up" in page
    assert "Approve a new grant and convert" in page
    assert 'form="convert-form"' in page
    assert json.loads(response.headers["HX-Trigger"])["wattfare:grant"]["remaining"] == 0


def test_form_escapes_the_filename(client: FlaskClient, make_grant) -> None:
    response = convert_form(client, make_grant(), "<img src=x onerror=alert(1)>.txt", b"hi")

    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in page


def test_markdown_with_raw_html_is_inert_in_the_preview(client: FlaskClient, make_grant) -> None:
    hostile = (
        "# Notes\n\n"
        "<script>window.pwned = 1</script>\n\n"
        '<img src="x" onerror="window.pwned = 1">\n\n'
        "[click](javascript:window.pwned=1)\n"
    )

    response = convert_form(client, make_grant(), "notes.md", hostile.encode())

    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<script" not in page
    assert re.search(r"<[a-z][^>]*\son[a-z]+\s*=", page) is None  # no event handlers
    assert 'href="javascript:' not in page


# --- a bug of ours -------------------------------------------------------------------------


@pytest.fixture
def broken_app(app):
    """A real server-side fault: WATTFARE_MODEL set to something that is not a model id."""
    app.config["WATTFARE_MODEL"] = None
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer as production does, not re-raise
    return app


def test_a_server_fault_is_a_calm_500_in_json(broken_app, client: FlaskClient, make_grant):
    response = convert_json(client, make_grant(), "hello")

    assert response.status_code == 500
    assert response.get_json() == {
        "error": "internal_error",
        "message": "Something went wrong on our side. Nothing was charged; please try again.",
    }


def test_a_server_fault_is_a_calm_500_fragment(broken_app, client: FlaskClient, make_grant):
    response = convert_form(client, make_grant(), "a.txt", b"hello")

    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert 'role="alert"' in page
    assert "Something went wrong on our side" in page
    assert "Traceback" not in page


def test_the_500_page_renders(app) -> None:
    from flask import render_template

    with app.test_request_context("/"):
        page = render_template("errors/500.html", message="Something went wrong on our side.")

    assert "<h1" in page and "Something went wrong on our side." in page
    assert 'href="/"' in page
