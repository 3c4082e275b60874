"""The converter page as served: what it contains, its headers, and the demo/engine seam."""

from __future__ import annotations

import ast
import re
from decimal import Decimal
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from wattfare_demo.converter import filetypes, render

CONVERTER = Path(__file__).resolve().parents[2] / "wattfare_demo" / "converter"


def test_page_has_the_form_and_its_configuration(client: FlaskClient, app: Flask) -> None:
    response = client.get("/")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    button = re.search(r'<button id="convert-button" type="submit"[^>]*>(.*?)</button>', page, re.S)
    assert button is not None
    assert re.sub(r"<[^>]+>", "", button[1]).strip() == "Convert with AI"  # its accessible name
    assert 'hx-post="/api/convert/plan"' in page  # choosing a file asks for the plan
    assert 'hx-ext="sse"' in page and 'sse-connect="/api/convert"' in page
    assert 'hx-encoding="multipart/form-data"' in page
    assert f'data-wattfare-publishable-key="{app.config["WATTFARE_PUBLISHABLE_KEY"]}"' in page
    assert 'data-wattfare-session="/api/wattfare-token"' in page
    assert "data-wattfare-base-url" not in page  # the embedded engine: this origin
    assert f'accept="{filetypes.accept_list()}"' in page
    assert ".docx,.pdf,.xlsx,.xlsm,.xls,.pptx,.epub" in filetypes.accept_list()
    assert f"{filetypes.hint()} · up to 20 MB" in page
    assert f'data-max-bytes="{20 * 1024 * 1024}"' in page
    assert 'data-max-requests="50"' in page
    assert '<option value="0" selected>None</option>' in page
    assert '<option value="10">+ 10 requests</option>' in page
    assert 'name="maxUsd"' in page


def test_a_separate_engine_is_named_to_the_page(app: Flask) -> None:
    app.config["WATTFARE_API_URL"] = "https://engine.example"
    response = app.test_client().get("/")

    assert 'data-wattfare-base-url="https://engine.example"' in response.get_data(as_text=True)


def test_page_runs_no_inline_script(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)

    scripts = re.findall(r"<script\b[^>]*>", page)
    assert len(scripts) == 4
    assert all(" src=" in tag for tag in scripts)
    assert "/static/vendor/htmx-2.0.11/htmx.min.js" in page
    assert "/static/vendor/htmx-ext-sse-2.2.4/sse.min.js" in page
    assert re.search(r"\son[a-z]+=", page) is None  # no inline event handlers
    assert "hx-on" not in page


def test_vendored_files_are_served(client: FlaskClient) -> None:
    for path in (
        "/static/vendor/htmx-2.0.11/htmx.min.js",
        "/static/vendor/htmx-ext-sse-2.2.4/sse.min.js",
        "/static/app.js",
        "/static/css/app.css",
        "/static/favicon.svg",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        response.close()


def test_security_headers(client: FlaskClient) -> None:
    headers = client.get("/").headers

    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "img-src 'self' data:;" in csp  # as the preview's sanitiser allows
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "object-src 'none'" in csp
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"


def test_api_answers_carry_the_same_headers(client: FlaskClient) -> None:
    response = client.post("/api/wattfare-token")

    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"
    assert "Content-Security-Policy" in response.headers


def test_converter_reaches_the_engine_only_through_the_sdk() -> None:
    """The seam (DESIGN.md): no module of the demo imports wattfare_demo.engine."""
    imported: set[str] = set()
    for path in CONVERTER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                imported.add("." * node.level + module)
    assert "..sdk" in imported  # the walk found the SDK import
    assert not [name for name in imported if "engine" in name]


# --- the preview's sanitiser ------------------------------------------------------------


def test_preview_renders_markdown() -> None:
    html = render.render_preview("# T\n\n- a\n- b\n\n| x | y |\n|---|---|\n| 1 | 2 |\n")

    assert "<h1>T</h1>" in html
    assert "<li>a</li>" in html
    assert "<th>x</th>" in html and "<td>2</td>" in html


def test_preview_lets_nothing_run() -> None:
    hostile = "\n\n".join(
        [
            "<script>window.pwned = 1</script>",
            '<img src="x" onerror="window.pwned = 1">',
            '<a href="https://ok.example" onclick="window.pwned = 1">x</a>',
            "[js](javascript:window.pwned=1)",
            "[data](data:text/html,<script>alert(1)</script>)",
            "![pic](javascript:alert(1))",
            '<iframe src="https://evil.example"></iframe>',
            "<style>body{display:none}</style>",
            '<form action="https://evil.example"><button>go</button></form>',
        ]
    )

    html = render.render_preview(hostile)

    assert "<script" not in html
    assert "<iframe" not in html and "<style" not in html and "<form" not in html
    assert re.search(r"<[a-z][^>]*\son[a-z]+\s*=", html) is None
    assert "javascript:" not in re.sub(r">[^<]*<", "><", html)  # not in any attribute
    assert 'href="data:' not in html


def test_preview_images_come_only_from_this_origin_or_data_urls() -> None:
    html = render.render_preview(
        "![a](https://tracker.example/pixel.png) ![b](//tracker.example/p.png) "
        "![c](/static/favicon.svg) ![d](data:image/png;base64,iVBORw0KGgo=) "
        "![e](HTTPS://tracker.example/x.png) ![f](data:image/svg+xml;base64,PHN2Zz4=)"
    )

    sources = re.findall(r'<img src="([^"]*)"', html)
    assert sources == ["/static/favicon.svg", "data:image/png;base64,iVBORw0KGgo="]
    assert "tracker.example" not in html
    assert html.count("<img") == 5  # the others keep their alt text; svg is no image here


def test_preview_links_do_not_leak_the_opener() -> None:
    html = render.render_preview("[site](https://example.com)")

    assert 'rel="noopener noreferrer nofollow"' in html


def test_download_helpers() -> None:
    assert render.download_name("Q3 report.final.html") == "Q3 report.final.md"
    assert render.download_name("noextension") == "noextension.md"
    assert render.download_name("../../etc/passwd") == "passwd.md"
    assert render.download_name('a"b<c>.csv') == "a_b_c_.md"
    assert render.download_name("...") == "converted.md"
    assert render.download_url("# Hi ✓").startswith("data:text/markdown;charset=utf-8;base64,")


def test_format_usd_never_rounds_up() -> None:
    assert render.format_usd(Decimal("0.49998")) == "$0.4999"
    assert render.format_usd(Decimal("0.5")) == "$0.50"
    assert render.format_usd(Decimal("3")) == "$3.00"
    assert render.format_usd(Decimal("0")) == "$0.00"
    assert render.format_usd(0.125) == "$0.125"


def test_human_size() -> None:
    assert render.human_size(1) == "1 byte"
    assert render.human_size(512) == "512 bytes"
    assert render.human_size(1536) == "1.5 KB"
    assert render.human_size(2 * 1024 * 1024) == "2 MB"


def test_uploads_are_kept_in_memory_never_spilled_to_a_temporary_file(app: Flask) -> None:
    import io

    from flask import request

    big = io.BytesIO(b"x" * (2 * 1024 * 1024))  # werkzeug spills anything over 500 KB
    with app.test_request_context(
        "/api/convert/plan",
        method="POST",
        data={"file": (big, "big.txt")},
        content_type="multipart/form-data",
    ):
        stream = request.files["file"].stream
        assert isinstance(stream, io.BytesIO)
        assert stream.getbuffer().nbytes == 2 * 1024 * 1024
