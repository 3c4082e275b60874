"""The converter's API routes through the Flask test client, against the real engine.

/api/wattfare-token: a session token for the page's own origin, refused to anyone else.
/api/convert/plan:   how many requests a file needs, before any grant exists.
/api/convert:        the grant first, then the file; one JSON answer, or (htmx, or
                     Accept: text/event-stream) server-sent events part by part.
Bad files and unusable grants cost nothing, which each test checks through the engine's
own GET /api/v1/grant.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests import documents
from tests.helpers import ORIGIN
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
# Three parts at CONVERTER_CHUNK_CHARS=2000 (see the `small_chunks` fixture).
LONG = "\n\n".join(f"# Part {n}\n\n" + f"Sentence {n} of the long report. " * 50 for n in (1, 2, 3))


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The demo's routes on one database: the engine's tests cover the database matrix."""
    return request.param


@pytest.fixture
def grant_status(client: FlaskClient, api_headers):
    """grant_status(token) -> the engine's view of the grant (requests, remaining, spentUsd)."""

    def status(token: str) -> dict[str, Any]:
        response = client.get("/api/v1/grant", headers=api_headers(token))
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return status


@pytest.fixture
def small_chunks(app) -> None:
    app.config["CONVERTER_CHUNK_CHARS"] = 2000


def convert_json(client: FlaskClient, token: str | None, file: Any, **headers: str):
    body: dict[str, Any] = {"file": file}
    if token is not None:
        body["grantToken"] = token
    return client.post("/api/convert", json=body, headers=headers)


def convert_form(client: FlaskClient, token: str | None, name: str, data: bytes):
    form: dict[str, Any] = {"file": (io.BytesIO(data), name)}
    if token is not None:
        form["grantToken"] = token
    return client.post("/api/convert", data=form, headers=HTMX, content_type="multipart/form-data")


def plan(client: FlaskClient, file: Any, **headers: str):
    return client.post("/api/convert/plan", json={"file": file}, headers=headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def events(response) -> list[tuple[str, str]]:
    """The (event, data) pairs of a text/event-stream body, as EventSource reads them."""
    found = []
    for block in response.get_data(as_text=True).split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
        if data:
            found.append((name, "\n".join(data)))
    return found


def unescape(html: str) -> str:
    return html.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# --- /api/wattfare-token ------------------------------------------------------------------


def test_token_is_minted_for_the_pages_origin_and_creates_grants(client: FlaskClient) -> None:
    response = client.post(
        "/api/wattfare-token", base_url=ORIGIN, headers={"Origin": ORIGIN}, json={"requests": 2}
    )

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"token", "expiresAt"}
    grant = client.post(
        "/api/v1/grants", json={"requests": 2}, headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert grant.status_code == 200, grant.get_json()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "null"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://localhost:5001"},
    ],
    ids=["missing", "null", "foreign", "other-port"],
)
def test_token_is_refused_to_other_origins(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.post("/api/wattfare-token", base_url=ORIGIN, headers=headers)

    assert response.status_code == 403
    assert response.get_json()["error"] == "origin_not_allowed"


# --- /api/convert/plan ------------------------------------------------------------------------


def test_plan_says_how_many_requests_a_file_needs_without_a_grant(
    client: FlaskClient, small_chunks
) -> None:
    response = plan(client, {"name": "report.md", "content": LONG})

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body == {
        "requests": 3,
        "kind": "markdown",
        "label": "Markdown",
        "filename": "report.md",
        "size": len(LONG),
        "chars": len(LONG),
        "sections": 1,
        "maxRequests": 50,
    }


def test_plan_reads_pages_sheets_and_slides(client: FlaskClient) -> None:
    for name, data, kind, sections in [
        ("report.pdf", documents.pdf_report(pages=3), "pdf", 3),
        ("cities.xlsx", documents.xlsx_book(), "xlsx", 2),
        ("deck.pptx", documents.pptx_deck(), "pptx", 2),
    ]:
        body = plan(client, {"name": name, "content": b64(data), "encoding": "base64"}).get_json()
        assert (body["kind"], body["sections"], body["requests"]) == (kind, sections, 1), name


def test_plan_as_an_htmx_fragment(client: FlaskClient) -> None:
    response = client.post(
        "/api/convert/plan",
        data={"file": (io.BytesIO(CSV.encode()), "cities.csv")},
        headers=HTMX,
        content_type="multipart/form-data",
    )

    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["Vary"] == "HX-Request"
    assert 'data-requests="1"' in page
    assert "This file needs <strong>1 AI request</strong>" in page


def test_plan_of_a_file_needing_too_many_requests_is_refused_clearly(
    app, client: FlaskClient, small_chunks
) -> None:
    app.config["CONVERTER_MAX_REQUESTS"] = 2

    response = plan(client, {"name": "report.md", "content": LONG})

    assert response.status_code == 413
    body = response.get_json()
    assert (body["error"], body["requests"], body["maxRequests"]) == ("too_many_requests", 3, 2)
    assert "needs 3 AI requests, more than the 2" in body["message"]


def test_plan_of_a_bad_file_is_the_extraction_error(client: FlaskClient) -> None:
    response = plan(client, {"name": "setup.exe", "content": "MZ"})

    assert response.status_code == 415
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json()["error"] == "unsupported_type"


# --- /api/convert: JSON ------------------------------------------------------------------------


def test_json_html_file_becomes_markdown_and_uses_one_request(
    client: FlaskClient, make_grant, grant_status
) -> None:
    token = make_grant(requests=2)

    response = convert_json(client, token, {"name": "report.html", "content": HTML})

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Vary"] == "HX-Request"
    body = response.get_json()
    assert set(body) == {"result", "filename", "finishReason", "remaining", "remainingUsd", "parts"}
    result = body["result"]
    assert result.startswith("# Quarterly report\n\nAll **good**.")
    assert "* Solar\n* Wind" in result or "- Solar\n- Wind" in result
    assert "| Source | MWh |" in result
    assert "pwned" not in result
    assert (body["remaining"], body["filename"], body["finishReason"]) == (1, "report.html", "stop")
    assert grant_status(token)["remaining"] == 1


def test_json_file_may_be_plain_text_as_in_the_seed(client: FlaskClient, make_grant) -> None:
    response = convert_json(client, make_grant(), CSV)

    assert response.status_code == 200, response.get_json()
    assert "| city | country |" in response.get_json()["result"]


def test_json_binary_files_come_base64(client: FlaskClient, make_grant) -> None:
    token = make_grant(requests=2)
    word = {"name": "orchard.docx", "content": b64(documents.word_report()), "encoding": "base64"}
    pdf = {"name": "report.pdf", "content": b64(documents.pdf_report(1)), "encoding": "base64"}

    from_word = convert_json(client, token, word)
    from_pdf = convert_json(client, token, pdf)

    assert from_word.status_code == 200, from_word.get_json()
    assert "| Variety | Tonnes |" in from_word.get_json()["result"]
    assert from_pdf.status_code == 200, from_pdf.get_json()
    assert "| Source | MWh | Share |" in from_pdf.get_json()["result"]
    assert from_pdf.get_json()["remaining"] == 0


def test_a_receipt_and_a_word_file_keep_their_paragraphs_end_to_end(
    client: FlaskClient, make_grant
) -> None:
    token = make_grant(requests=2)
    receipt = {"name": "receipt.pdf", "content": b64(documents.pdf_receipt()), "encoding": "base64"}
    word = {"name": "orchard.docx", "content": b64(documents.word_report()), "encoding": "base64"}

    from_receipt = convert_json(client, token, receipt).get_json()["result"]
    from_word = convert_json(client, token, word).get_json()["result"]

    assert re.search(r"^#", from_receipt, re.MULTILINE) is None  # no giant headings
    assert "TOTAL 6.70" in from_receipt
    assert from_word.startswith("Apple\n\n# Orchard report")  # "Apple" stays a paragraph
    assert "- Pruning in March\n- Picking in September" in from_word
    assert "| Cox | 12 |" in from_word


def test_a_binary_kind_sent_as_text_is_400(client: FlaskClient, make_grant) -> None:
    response = convert_json(client, make_grant(), {"name": "a.pdf", "content": "%PDF-1.4"})

    assert response.status_code == 400
    assert "base64" in response.get_json()["message"]


def test_a_ten_thousand_row_csv_converts_whole_in_parts(
    client: FlaskClient, make_grant, grant_status
) -> None:
    rows = "\n".join(f"{i},City {i},{i * 7}" for i in range(10_000))
    file = {"name": "cities.csv", "content": f"id,name,value\n{rows}\n"}
    needed = plan(client, file).get_json()["requests"]
    assert needed > 5  # more than one call's worth: split between rows
    token = make_grant(requests=needed)

    response = convert_json(client, token, file)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["finishReason"], body["parts"], body["remaining"]) == ("stop", needed, 0)
    lines = body["result"].split("\n")
    data = [line for line in lines if re.fullmatch(r"\| \d+ \| City \d+ \| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in data] == list(range(10_000))  # all, in order
    assert lines.count("| id | name | value |") == needed  # the header repeated per part
    assert grant_status(token)["remaining"] == 0


def test_a_400_kb_web_page_converts_whole(client: FlaskClient, make_grant) -> None:
    sections = "".join(
        f"<h2>Section {i}</h2><p>{'Prose about the topic, with a <a href=/wiki/x>link</a>. ' * 40}"
        f"</p><table><tr><th>Year</th><th>Value</th></tr><tr><td>{1900 + i}</td><td>{i}</td>"
        "</tr></table>"
        for i in range(175)
    )
    html = f"<html><body><nav>Menu</nav><h1>Topic</h1>{sections}</body></html>"
    assert len(html) > 400_000
    file = {"name": "Topic - Wikipedia.html", "content": html}
    needed = plan(client, file).get_json()["requests"]

    response = convert_json(client, make_grant(requests=needed), file)

    assert response.status_code == 200, response.get_json()
    result = response.get_json()["result"]
    assert response.get_json()["finishReason"] == "stop"
    assert [int(n) for n in re.findall(r"^## Section (\d+)$", result, re.MULTILINE)] == list(
        range(175)
    )


def test_used_up_grant_is_402_grant_used(client: FlaskClient, make_grant) -> None:
    token = make_grant(requests=1)
    assert convert_json(client, token, "first").status_code == 200

    response = convert_json(client, token, "second")

    assert response.status_code == 402
    body = response.get_json()
    assert (body["error"], body["reason"]) == ("grant_used", "exhausted")
    assert "new grant" in body["message"]
    assert response.headers["Cache-Control"] == "no-store"


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


def test_the_grant_is_checked_before_the_file_is_read(app, client: FlaskClient, make_grant) -> None:
    # A cage with no time at all: every extraction in it fails…
    app.config["CONVERTER_EXTRACT_TIMEOUT"] = 0
    assert convert_json(client, make_grant(), "hello").get_json()["error"] == "too_complex"
    # …so a bad grant answered 402 was refused before the file went near a parser.
    for token in ("wfg_" + "x" * 40, None):
        response = convert_json(client, token, "hello")
        assert response.status_code in (400, 402)
        assert response.get_json()["error"] in ("grant_used", "grant_required")


def test_a_file_needing_more_requests_than_the_grant_has_costs_nothing(
    client: FlaskClient, make_grant, grant_status, small_chunks
) -> None:
    token = make_grant(requests=2)

    response = convert_json(client, token, {"name": "report.md", "content": LONG})

    assert response.status_code == 402
    body = response.get_json()
    assert (body["error"], body["requests"], body["remaining"]) == ("grant_too_small", 3, 2)
    assert grant_status(token)["remaining"] == 2
    assert grant_status(token)["spentUsd"] == 0


def test_a_conversion_cut_by_the_dollar_cap_keeps_and_charges_only_its_parts(
    client: FlaskClient, make_grant, grant_status, small_chunks
) -> None:
    # local/markdown costs $1/M tokens in, $2/M out: a part here costs about $0.0015.
    token = make_grant(requests=3, max_usd=0.002)

    response = convert_json(client, token, {"name": "report.md", "content": LONG})

    assert response.status_code == 402
    body = response.get_json()
    assert (body["error"], body["reason"], body["parts"]) == ("grant_used", "over_cap", 3)
    assert 1 <= body["partsConverted"] < 3
    assert body["result"].startswith("# Part 1\n\nSentence 1 of the long report.")
    assert "# Part 3" not in body["result"]
    assert "You keep part" in body["message"]
    status = grant_status(token)
    assert status["spentUsd"] <= 0.002
    assert status["requests"] - status["remaining"] == body["partsConverted"]


@pytest.mark.parametrize(
    ("file", "status", "code"),
    [
        ({"name": "empty.txt", "content": ""}, 400, "empty_file"),
        ({"name": "blank.md", "content": "  \n\t"}, 400, "empty_file"),
        ({"name": "setup.exe", "content": "MZ"}, 415, "unsupported_type"),
        ({"name": "data.json", "content": "{oops"}, 422, "unreadable_file"),
        ({"name": "scan.pdf", "content": "bm90IGEgcGRm", "encoding": "base64"}, 422,
         "unreadable_file"),
        ({"name": "a.docx", "content": "UEsDBA==", "encoding": "base64"}, 422, "unreadable_file"),
        ({"name": "bomb.docx", "content": b64(documents.zip_claiming(0.3)),
          "encoding": "base64"}, 413, "file_too_large"),
    ],
    ids=["empty", "blank", "exe", "bad-json", "bad-pdf", "bad-docx", "zip-bomb"],
)  # fmt: skip
def test_bad_files_cost_nothing(
    client: FlaskClient, make_grant, grant_status, file: dict[str, str], status: int, code: str
) -> None:
    token = make_grant(requests=1)

    response = convert_json(client, token, file)

    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == code
    assert body["message"]
    after = grant_status(token)
    assert (after["remaining"], after["spentUsd"]) == (1, 0)


def test_a_file_over_20_mb_is_413(client: FlaskClient, make_grant) -> None:
    data = b"a,b\n" * (MAX_UPLOAD_BYTES // 4 + 1)
    response = client.post(
        "/api/convert",
        data={"file": (io.BytesIO(data), "big.csv"), "grantToken": make_grant()},
        content_type="multipart/form-data",
    )

    assert response.status_code == 413
    assert response.get_json()["error"] == "file_too_large"


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


@pytest.mark.parametrize("path", ["/api/convert", "/api/convert/plan"])
@pytest.mark.parametrize("raw", ["[" * 100_000, '{"file": ' * 100_000, "{nope"])
def test_json_nested_too_deeply_or_broken_is_400(client: FlaskClient, path: str, raw: str) -> None:
    response = client.post(path, data=raw, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_json"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "raw",
    ['{"grantToken": "wfg_x", "file": "\\ud800"}',
     '{"grantToken": "wfg_x", "file": {"name": "a.txt", "content": "x\\udfff"}}'],
)  # fmt: skip
def test_text_that_is_not_unicode_is_400(client: FlaskClient, raw: str) -> None:
    response = client.post("/api/convert", data=raw, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_json"


def test_other_content_types_are_415(client: FlaskClient) -> None:
    response = client.post("/api/convert", data="hello", content_type="text/plain")

    assert response.status_code == 415
    assert response.get_json()["error"] == "unsupported_content_type"


def test_a_body_past_the_app_wide_limit_is_413_json(client: FlaskClient) -> None:
    body = json.dumps({"grantToken": "wfg_x", "file": "a" * (29 * 1024 * 1024)})

    response = client.post("/api/convert", data=body, content_type="application/json")

    assert response.status_code == 413
    assert response.get_json()["error"] == "file_too_large"


def test_the_engine_keeps_its_own_2_mb_body_limit(client: FlaskClient) -> None:
    body = b'{"model": "local/markdown", "x": "' + b"a" * (3 * 1024 * 1024) + b'"}'

    response = client.post("/api/v1/chat/completions", data=body, content_type="application/json")

    assert response.status_code == 413


def test_cross_origin_posts_are_refused(client: FlaskClient, make_grant, grant_status) -> None:
    token = make_grant(requests=1)

    response = convert_json(client, token, "hello", Origin="https://evil.example")

    assert response.status_code == 403
    assert grant_status(token)["remaining"] == 1


# --- /api/convert: the stream -----------------------------------------------------------------


def test_htmx_gets_the_conversion_as_server_sent_events_part_by_part(
    client: FlaskClient, make_grant, grant_status, small_chunks
) -> None:
    token = make_grant(requests=4)

    response = convert_form(client, token, "report.md", LONG.encode())

    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_data(as_text=True).startswith(": conversion started\n\n")
    stream = events(response)
    names = [name for name, _ in stream]
    assert names[0] == "start" and names[-1] == "done"
    assert names.count("part") == 3
    assert [data for name, data in stream if name == "status"] == [
        *(f"Part {n} of 3: the AI model is writing…" for n in (1, 2, 3)),
        "Done: 3 parts, one AI request each.",
    ]
    start = stream[0][1]
    assert "report.md" in start and "in 3 parts, one AI request each" in start
    parts = [data for name, data in stream if name == "part"]
    assert [re.search(r'data-part="(\d)"', part)[1] for part in parts] == ["1", "2", "3"]
    assert "<h1>Part 2</h1>" in parts[1]
    source = unescape("".join(data for name, data in stream if name == "delta"))
    assert source.startswith("# Part 1\n\nSentence 1 of the long report.")
    assert source.count("# Part") == 3
    done = stream[-1][1]
    assert "1 request remaining" in done
    assert 'download="report.md"' in done
    encoded = re.search(r'href="data:text/markdown;charset=utf-8;base64,([^"]+)"', done)[1]
    assert base64.b64decode(encoded).decode() == source.strip()
    assert 'data-grant-remaining="1"' in done
    assert grant_status(token)["remaining"] == 1


def test_the_stream_and_the_json_answer_agree(client: FlaskClient, make_grant, small_chunks):
    file = {"name": "report.md", "content": LONG}
    whole = convert_json(client, make_grant(requests=3), file).get_json()["result"]
    streamed = client.post(
        "/api/convert",
        json={"grantToken": make_grant(requests=3), "file": file},
        headers={"Accept": "text/event-stream"},
    )

    source = unescape("".join(data for name, data in events(streamed) if name == "delta"))
    assert source.strip() == whole


def test_a_stream_cut_by_the_cap_says_which_parts_arrived(
    client: FlaskClient, make_grant, small_chunks
) -> None:
    response = convert_form(client, make_grant(requests=3, max_usd=0.002), "r.md", LONG.encode())

    stream = events(response)
    done = stream[-1][1]
    assert stream[-1][0] == "done"
    arrived = sum(1 for name, _ in stream if name == "part")
    assert 1 <= arrived < 3
    assert f"Stopped after {arrived} of 3 parts" in done
    assert ("status", f"Stopped after {arrived} of 3 parts.") in stream
    assert "dollar cap has been reached" in done
    assert "Download .md" in done  # the parts that arrived are the visitor's
    assert "Approve a new grant and convert" in done
    assert 'data-grant-remaining="0"' in done  # the page forgets the spent grant
    assert "requests remaining" not in done


def test_refusals_before_the_stream_are_fragments_with_their_status(
    client: FlaskClient, make_grant, grant_status
) -> None:
    token = make_grant(requests=1)
    first = convert_form(client, token, "a.txt", b"one")
    assert first.status_code == 200
    assert "0 requests remaining" in first.get_data(as_text=True)  # read to its end

    used = convert_form(client, token, "b.txt", b"two")
    bad_file = convert_form(client, make_grant(requests=2), "photo.png", b"\x89PNG....")

    assert used.status_code == 402
    page = used.get_data(as_text=True)
    assert "Grant used up" in page and "Approve a new grant and convert" in page
    assert 'data-grant-remaining="0"' in page
    assert bad_file.status_code == 415
    page = bad_file.get_data(as_text=True)
    assert 'role="alert"' in page and "photo.png is not a supported file type" in page
    assert "data-grant-remaining" not in page  # the page keeps its grant


def test_the_filename_is_escaped_in_the_stream(client: FlaskClient, make_grant) -> None:
    response = convert_form(client, make_grant(), "<img src=x onerror=alert(1)>.txt", b"hi")

    body = response.get_data(as_text=True)
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in body


def test_markdown_with_raw_html_is_inert_in_the_preview(client: FlaskClient, make_grant) -> None:
    hostile = (
        "# Notes\n\n<script>window.pwned = 1</script>\n\n"
        '<img src="x" onerror="window.pwned = 1">\n\n[click](javascript:window.pwned=1)\n\n'
        "![tracker](https://evil.example/pixel.png)\n"
    )

    response = convert_form(client, make_grant(), "notes.md", hostile.encode())

    body = response.get_data(as_text=True)
    assert "<script" not in body
    assert re.search(r"<[a-z][^>]*\son[a-z]+\s*=", body) is None
    assert 'href="javascript:' not in body
    assert 'src="https://evil.example' not in body


# --- a bug of ours -----------------------------------------------------------------------------


@pytest.fixture
def broken_app(app):
    """A real server-side fault: WATTFARE_MODEL set to something that is not a model id."""
    app.config["WATTFARE_MODEL"] = None
    app.config["PROPAGATE_EXCEPTIONS"] = False
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
    assert 'role="alert"' in page and "Something went wrong on our side" in page
    assert "Traceback" not in page
