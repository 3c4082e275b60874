"""Nothing of a visitor's document at rest: a document with a marker, converted through
/api/convert and through the raw API with an Idempotency-Key (and replayed), is found in
no file the app wrote (the SQLite database, its -wal and -shm, instance/, temporary
files) and in nothing it printed; yet the replay still works."""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import chat_body
from wattfare_demo.extensions import db

ROOT = Path(__file__).resolve().parents[2]


def _files_written_since(folder: Path, since: float) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_converted_document_is_found_nowhere_on_disk(
    app, client, make_grant, api_headers, tmp_path, monkeypatch, capfd, backend
):
    started = time.time() - 1
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the app's temporary files
    monkeypatch.setenv("TMPDIR", str(scratch))  # and its worker processes'
    marker = f"Quokka{secrets.token_hex(8)}"

    converted = client.post(
        "/api/convert",
        json={
            "grantToken": make_grant(2),
            "file": {"name": "report.html", "content": f"<h1>Report</h1><p>{marker}</p>"},
        },
    )
    assert converted.status_code == 200, converted.get_data(as_text=True)[:300]
    assert marker in converted.get_data(as_text=True)

    headers = {**api_headers(make_grant(2)), "Idempotency-Key": secrets.token_hex(16)}
    body = chat_body(f"<p>{marker} again</p>")
    first = client.post("/api/v1/chat/completions", headers=headers, json=body)
    replay = client.post("/api/v1/chat/completions", headers=headers, json=body)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == first.get_data() and marker.encode() in first.get_data()

    with app.app_context():
        db.session.remove()  # nothing held back in this process
    written = [
        *_files_written_since(tmp_path, started),
        *_files_written_since(ROOT / "instance", started),
    ]
    database = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    assert Path(database) in written and Path(database + "-wal") in written
    for path in written:
        assert marker.encode() not in path.read_bytes(), f"the document is kept in {path}"
    printed = capfd.readouterr()
    assert marker not in printed.out and marker not in printed.err
