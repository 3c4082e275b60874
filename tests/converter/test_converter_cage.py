"""The extraction cage: bombs are refused within their limits and the app keeps answering.

Real bombs, made in tests/documents.py: a 75 KB .docx that inflates to 10 MB of paragraph
XML, a PDF whose 1,500 pages all draw one compressed stream of 4,000 text operators, a
zip that inflates to 0.3 GB. The limits are lowered for the tests through the settings
(CONVERTER_EXTRACT_*), as an operator would set them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests import documents
from wattfare_demo.converter.cage import CageLimits, extract_in_cage
from wattfare_demo.converter.extract import ExtractionError

WORD_BOMB = documents.word_bomb(10)
PDF_BOMB = documents.pdf_sharing_one_stream(1500)


def caged(name: str, data: bytes, **limits: Any) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        extract_in_cage(name, data, None, CageLimits(**limits))
    return caught.value


def test_an_ordinary_file_is_read_in_the_cage() -> None:
    document = extract_in_cage("orchard.docx", documents.word_report(), None, CageLimits())
    assert document.kind == "docx"
    assert "| Variety | Tonnes |" in document.markdown


def test_errors_cross_the_pipe_unchanged() -> None:
    error = caged("data.json", b"{oops")
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("data.json is not valid JSON")


@pytest.mark.parametrize(("name", "data"), [("bomb.docx", WORD_BOMB), ("bomb.pdf", PDF_BOMB)])
def test_a_parser_bomb_runs_out_of_cpu_time(name: str, data: bytes) -> None:
    error = caged(name, data, cpu_seconds=1, wall_seconds=20)
    assert (error.status, error.code) == (422, "too_complex")
    assert "more than 1 second of work" in error.message


def test_a_child_still_working_at_the_deadline_is_killed() -> None:
    error = caged("bomb.pdf", PDF_BOMB, cpu_seconds=60, wall_seconds=1)
    assert (error.status, error.code) == (422, "too_complex")
    assert "took longer than 1 second" in error.message


def test_a_file_that_needs_more_memory_than_allowed_is_too_large() -> None:
    error = caged("big.txt", b"word " * 12_000_000, memory_mb=250)
    assert (error.status, error.code) == (413, "file_too_large")
    assert "needs more memory" in error.message


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    error = caged("bomb.xlsx", documents.zip_claiming(0.3, "xl/workbook.xml"), memory_mb=350)
    assert (error.status, error.code) == (413, "file_too_large")
    assert "unpacks to more than" in error.message


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "CONVERTER_EXTRACT_CPU_SECONDS": 1, "CONVERTER_EXTRACT_TIMEOUT": 20}


def test_bombs_at_once_are_refused_while_the_page_keeps_answering(live_server) -> None:
    """Three bombs for two slots: two are read (and stopped) while one waits its turn."""
    finished: list[str] = []
    lock = threading.Lock()

    def plan(name: str, data: bytes) -> httpx.Response:
        response = httpx.post(
            f"{live_server.url}/api/convert/plan", files={"file": (name, data)}, timeout=60
        )
        with lock:
            finished.append("bomb")
        return response

    with httpx.Client(base_url=live_server.url, timeout=10) as browser:
        browser.get("/")  # the page works before…
        with ThreadPoolExecutor(3) as pool:
            bombs = [pool.submit(plan, "bomb.docx", WORD_BOMB)]
            bombs += [pool.submit(plan, f"bomb{i}.pdf", PDF_BOMB) for i in range(2)]
            for _ in range(5):  # …and while the bombs are being read
                page = browser.get("/")
                assert page.status_code == 200
                with lock:
                    finished.append("page")
            answers = [bomb.result() for bomb in bombs]
    assert finished[:5] == ["page"] * 5  # every page view came back before any bomb did
    for answer in answers:
        assert answer.status_code in (422, 503), answer.text
        assert answer.json()["error"] in ("too_complex", "busy")
    assert any(answer.json()["error"] == "too_complex" for answer in answers)
