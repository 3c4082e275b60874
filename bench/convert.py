"""Benchmark the converter: conversion time against file size, and click to first Markdown.

    .venv/bin/python bench/convert.py                 # both parts (~3 min on 2 cores)
    .venv/bin/python bench/convert.py --only sizes    # conversion time per kind and size
    .venv/bin/python bench/convert.py --only browser  # click to first Markdown on the page

1. Sizes. For each kind at a few sizes (pages, rows, KB), made as the tests make them
   (tests/documents.py), side by side in one run:
   - markitdown: `MarkItDown().convert_stream()`, what a visitor gets in a terminal (the
     baseline);
   - extract: our extraction, in this process;
   - cage: the same in the extraction cage (a forkserver child with its limits);
   - convert: the whole `POST /api/convert` (JSON) on local/markdown: the grant check,
     the cage, the chunks, one model call each, through the SDK and the engine.
   Ratios: cage/extract (the price of the cage) and convert/markitdown.
2. Browser. Chromium clicks Convert with AI on a held grant's page (the popup approves
   itself, WATTFARE_AUTO_APPROVE) and records, with a MutationObserver, when the first
   Markdown appears and when the conversion is done. Once on local/markdown and once on
   a model that writes like a hosted one (tests/fake_upstream.py, 40 ms per delta): the
   streamed page shows Markdown long before the whole answer exists, which is what the
   page showed before streaming (at "done").

Each measurement is the median of --repeat runs. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("WATTFARE_RATE_LIMITS", "off")


def median_ms(run: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def make_app(database: Path, **config: Any):
    from tests.helpers import ORIGIN
    from wattfare_demo import create_app
    from wattfare_demo.config import engine_options
    from wattfare_demo.engine import ensure_configured_app
    from wattfare_demo.engine.tokens import new_app_id, new_secret_key
    from wattfare_demo.extensions import db

    app_id = new_app_id()
    url = f"sqlite:///{database}"
    app = create_app(
        {
            "SECRET_KEY": "bench-" + "x" * 40,
            "SQLALCHEMY_DATABASE_URI": url,
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options(url, 5),
            "WATTFARE_PUBLISHABLE_KEY": f"pk_test_{app_id}",
            "WATTFARE_SECRET_KEY": new_secret_key("test", app_id),
            "WATTFARE_ALLOWED_ORIGINS": [ORIGIN],
            "RATELIMIT_ENABLED": False,
            **config,
        }
    )
    with app.app_context():
        db.create_all()
    ensure_configured_app(app)
    return app


def grant(client: Any, secret_key: str, requests: int) -> str:
    from tests.helpers import mint_session

    response = client.post(
        "/api/v1/grants",
        json={"requests": requests},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["grantToken"]


# --- 1. sizes -------------------------------------------------------------------------


def cases() -> list[tuple[str, str, str, bytes]]:
    from tests import documents

    def csv(rows: int) -> bytes:
        lines = "\n".join(f"{i},City {i},{i * 7}" for i in range(rows))
        return f"id,name,value\n{lines}\n".encode()

    def html(kilobytes: int) -> bytes:
        section = (
            "<h2>Section</h2><p>" + "Prose with a <a href=/wiki/x>link</a>. " * 40 + "</p>"
            "<table><tr><th>Year</th><th>Value</th></tr><tr><td>1900</td><td>1</td></tr></table>"
        )
        return f"<html><body><h1>Topic</h1>{section * (kilobytes * 1024 // len(section))}</body>"\
            "</html>".encode()  # fmt: skip

    return [
        ("pdf", "1 page", "report.pdf", documents.pdf_report(pages=1)),
        ("pdf", "10 pages", "report.pdf", documents.pdf_report(pages=10)),
        ("pdf", "50 pages", "report.pdf", documents.pdf_report(pages=50)),
        ("docx", "50 paragraphs", "book.docx", documents.word_sized(50)),
        ("docx", "500 paragraphs", "book.docx", documents.word_sized(500)),
        ("xlsx", "1,000 rows", "cities.xlsx", documents.xlsx_book(rows=1000)),
        ("xlsx", "10,000 rows", "cities.xlsx", documents.xlsx_book(rows=10_000)),
        ("csv", "1,000 rows", "cities.csv", csv(1000)),
        ("csv", "10,000 rows", "cities.csv", csv(10_000)),
        ("html", "50 KB", "page.html", html(50)),
        ("html", "400 KB", "page.html", html(400)),
        ("pptx", "2 slides", "deck.pptx", documents.pptx_deck()),
    ]


def bench_sizes(repeat: int) -> list[dict[str, Any]]:
    from markitdown import MarkItDown
    from markitdown._exceptions import FileConversionException

    from wattfare_demo.converter.cage import CageLimits, extract_in_cage
    from wattfare_demo.converter.extract import extract

    markitdown = MarkItDown()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        app = make_app(Path(folder) / "bench.db")
        client = app.test_client()
        secret = app.config["WATTFARE_SECRET_KEY"]
        extract_in_cage("warm.txt", b"warm up the forkserver", None, CageLimits())
        for kind, size, name, data in cases():
            file = {"name": name, "content": base64.b64encode(data).decode(), "encoding": "base64"}
            needed = client.post("/api/convert/plan", json={"file": file}).get_json()["requests"]

            def convert(needed: int = needed, file: dict[str, str] = file) -> None:
                token = grant(client, secret, needed)
                response = client.post("/api/convert", json={"grantToken": token, "file": file})
                assert response.status_code == 200, response.get_json()
                assert response.get_json()["finishReason"] == "stop"

            try:
                baseline: float | None = median_ms(
                    lambda data=data, name=name: markitdown.convert_stream(
                        io.BytesIO(data), file_extension="." + name.rsplit(".", 1)[1]
                    ),
                    repeat,
                )
            except FileConversionException:  # xlsx: markitdown needs pandas, we do not
                baseline = None
            inproc = median_ms(lambda data=data, name=name: extract(name, data), repeat)
            caged = median_ms(
                lambda data=data, name=name: extract_in_cage(name, data, None, CageLimits()),
                repeat,
            )
            whole = median_ms(convert, repeat)
            row = {"kind": kind, "size": size, "bytes": len(data), "requests": needed,
                   "markitdown_ms": baseline, "extract_ms": inproc, "cage_ms": caged,
                   "convert_ms": whole}  # fmt: skip
            rows.append(row)
            base = "       —" if baseline is None else f"{baseline:8.1f}"
            ratio = "    —" if baseline is None else f"{whole / baseline:5.2f}"
            print(
                f"{kind:5} {size:15} {len(data) / 1024:9.1f} KB {needed:4} req  "
                f"markitdown {base}  extract {inproc:8.1f}  cage {caged:8.1f}  "
                f"convert {whole:8.1f} ms  cage/extract {caged / inproc:5.2f}  "
                f"convert/markitdown {ratio}",
                flush=True,
            )
    return rows


# --- 2. browser -------------------------------------------------------------------------

OBSERVE = """() => {
  window.__bench = {};
  const source = document.getElementById("result");
  new MutationObserver(() => {
    const code = document.getElementById("markdown-source");
    if (code && code.textContent.length > 0 && !window.__bench.first) {
      window.__bench.first = performance.now();
    }
    if (document.querySelector("[data-done]") && !window.__bench.done) {
      window.__bench.done = performance.now();
    }
  }).observe(source, { childList: true, subtree: true, characterData: true });
  document.getElementById("convert-button").addEventListener(
    "click", () => { window.__bench.click = performance.now(); }, { capture: true });
}"""


def bench_browser(repeat: int) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from tests.e2e.conftest import CHROMIUM_ARGS, system_chromium
    from tests.fake_upstream import FAKE_MODEL, FAKE_UPSTREAM_KEY, FakeUpstream, StreamReply

    document = "\n\n".join(
        f"# Section {n}\n\n" + f"Sentence {n} of the report. " * 60 for n in range(1, 6)
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder, FakeUpstream() as upstream:
        deltas = tuple(f"word{i} " for i in range(60))
        upstream.default = StreamReply(chunks=deltas, interval=0.04, comments=False)
        setups = {
            "local/markdown": {},
            "a hosted-like model (40 ms per delta)": {
                "WATTFARE_UPSTREAM_URL": upstream.url,
                "WATTFARE_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY,
                "WATTFARE_PRICES": {FAKE_MODEL: {"input": 1, "output": 2}},
                "WATTFARE_MODEL": FAKE_MODEL,
            },
        }
        with sync_playwright() as playwright:
            args = {"args": CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])}
            if system_chromium():
                args["executable_path"] = system_chromium()
            browser = playwright.chromium.launch(**args)
            for label, config in setups.items():
                app = make_app(Path(folder) / f"{len(rows)}.db", WATTFARE_AUTO_APPROVE=True,
                               CONVERTER_CHUNK_CHARS=2000, **config)  # fmt: skip
                server = make_server("127.0.0.1", 0, app, threaded=True)
                thread = threading.Thread(target=server.serve_forever, daemon=True)
                thread.start()
                url = f"http://127.0.0.1:{server.server_port}"
                from wattfare_demo.engine.apps import add_origin, app_for_secret_key
                from wattfare_demo.extensions import db

                with app.app_context():
                    add_origin(app_for_secret_key(app.config["WATTFARE_SECRET_KEY"]), url)
                    db.session.remove()
                firsts, dones = [], []
                for _ in range(repeat):
                    page = browser.new_page()
                    page.goto(url + "/")
                    page.wait_for_function("() => window.htmx && window.Wattfare")
                    page.get_by_label("Choose a file").set_input_files(
                        {
                            "name": "report.md",
                            "mimeType": "text/markdown",
                            "buffer": document.encode(),
                        }
                    )
                    page.locator("#plan [data-requests]").wait_for()
                    page.evaluate(OBSERVE)
                    page.get_by_role("button", name="Convert with AI").click()
                    page.locator("[data-done]").wait_for(timeout=60_000)
                    marks = page.evaluate("window.__bench")
                    firsts.append(marks["first"] - marks["click"])
                    dones.append(marks["done"] - marks["click"])
                    page.close()
                server.shutdown()
                row = {"model": label, "parts": 5, "first_ms": statistics.median(firsts),
                       "done_ms": statistics.median(dones)}  # fmt: skip
                rows.append(row)
                print(
                    f"{label:38} click to first Markdown {row['first_ms']:7.0f} ms, "
                    f"to the whole answer {row['done_ms']:7.0f} ms "
                    f"(first/whole {row['first_ms'] / row['done_ms']:.2f})",
                    flush=True,
                )
            browser.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["sizes", "browser"])
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    if options.only in (None, "sizes"):
        bench_sizes(options.repeat)
    if options.only in (None, "browser"):
        bench_browser(options.repeat)


if __name__ == "__main__":  # the cage's forkserver re-imports this file: guard the entry point
    main()
