"""wattfare_demo.converter.extract: real .docx and PDF files are built here at test time.

python-docx writes the Word documents; PDFs are written by hand (`make_pdf`) because pypdf
can't lay out text, and pypdf's PdfWriter encrypts them.
"""

from __future__ import annotations

import ast
import codecs
import dataclasses
import io
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import docx
import pytest
from docx.document import Document as DocxDocument
from pypdf import PdfReader, PdfWriter

from wattfare_demo.converter import extract
from wattfare_demo.converter.extract import (
    MAX_PDF_PAGES,
    MAX_TEXT_CHARS,
    MAX_UPLOAD_BYTES,
    STATUS_BY_CODE,
    SUPPORTED,
    ExtractedDocument,
    ExtractionError,
    extract_text,
)

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


# --- hand-made PDFs -------------------------------------------------------------------------


def text_stream(text: str) -> bytes:
    """A content stream that shows `text` in Helvetica 12pt near the top of the page."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")


# What a scanner produces: the page is one image, drawn with no text operators at all.
SCANNED_STREAM = b"q 468 0 0 648 72 72 cm /Im1 Do Q"


def make_pdf(*streams: bytes) -> bytes:
    """A minimal valid PDF 1.4 with one page per content stream and a correct xref table.

    Objects: 1 catalog, 2 page tree, 3 Helvetica, 4 a 1x1 grey image, then for each page a
    page object and its content stream.
    """
    first_page = 5
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(len(streams)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(streams)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray"
        b" /BitsPerComponent 8 /Length 1 >>\nstream\n\x80\nendstream",
    ]
    for index, stream in enumerate(streams):
        contents = first_page + 2 * index + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            b" /Resources << /Font << /F1 3 0 R >> /XObject << /Im1 4 0 R >> >>"
            b" /Contents %d 0 R >>" % contents
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # binary comment marks the file binary
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset  # each entry is exactly 20 bytes
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)


def encrypt_pdf(pdf: bytes, user_password: str, owner_password: str | None = None, **kw) -> bytes:
    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf)).pages:
        writer.add_page(page)
    writer.encrypt(user_password, owner_password, **kw)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def hello_pdf() -> bytes:
    return make_pdf(b"BT /F1 12 Tf 72 720 Td (Hello PDF) Tj ET")


# --- python-docx documents ------------------------------------------------------------------


def save_docx(document: DocxDocument, path: Path) -> bytes:
    document.save(str(path))
    return path.read_bytes()


@pytest.fixture
def report_docx(tmp_path: Path) -> bytes:
    """Title, headings, bullet and numbered lists, and a table, in a known order."""
    document = docx.Document()
    document.add_heading("Grant report", level=0)  # the "Title" style
    document.add_paragraph("We spent the grant on insulation.")
    document.add_heading("Spending", level=1)
    document.add_paragraph("Loft insulation", style="List Bullet")
    document.add_paragraph("Heat pump", style="List Bullet")
    document.add_paragraph("Air source", style="List Bullet 2")
    document.add_paragraph("")  # empty paragraphs are dropped
    document.add_heading("Next steps", level=2)
    document.add_paragraph("Apply again", style="List Number")
    document.add_paragraph("Report back", style="List Number")
    table = document.add_table(rows=3, cols=2)
    for row, values in zip(
        table.rows, [("Item", "Cost"), ("Loft", "1200"), ("Pump", "")], strict=True
    ):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_paragraph("Signed, the treasurer.")
    return save_docx(document, tmp_path / "report.docx")


REPORT_TEXT = (
    "# Grant report\n"
    "\n"
    "We spent the grant on insulation.\n"
    "\n"
    "# Spending\n"
    "\n"
    "- Loft insulation\n"
    "- Heat pump\n"
    "  - Air source\n"
    "\n"
    "## Next steps\n"
    "\n"
    "1. Apply again\n"
    "1. Report back\n"
    "\n"
    "Item\tCost\n"
    "Loft\t1200\n"
    "Pump\t\n"
    "\n"
    "Signed, the treasurer."
)


def rezip(data: bytes, transform: Callable[[str, bytes], bytes | None]) -> bytes:
    """Copy a zip, replacing each member by transform(name, content); None drops it."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = transform(info.filename, source.read(info))
            if content is not None:
                target.writestr(info, content)
    return out.getvalue()


def raises(filename: str, data: bytes, content_type: str | None = None) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        extract_text(filename, data, content_type)
    return caught.value


# --- the public contract --------------------------------------------------------------------


def test_error_carries_status_code_and_message() -> None:
    error = raises("report.xls", b"\xd0\xcf\x11\xe0")
    assert (error.status, error.code) == (415, "unsupported_type")
    assert error.message == (
        "report.xls is not a supported file type. "
        "Upload a .txt, .md, .html, .csv, .json, .docx or .pdf file."
    )
    assert str(error) == error.message


def test_each_code_has_one_status() -> None:
    assert STATUS_BY_CODE == {
        "empty_file": 400,
        "file_too_large": 413,
        "text_too_long": 413,
        "unsupported_type": 415,
        "unreadable_file": 422,
        "no_text": 422,
    }


def test_extracted_document_is_frozen() -> None:
    result = extract_text("notes.txt", b"hi")
    assert result == ExtractedDocument(filename="notes.txt", kind="text", size=2, text="hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "changed"  # type: ignore[misc]


def test_module_does_not_import_flask() -> None:
    tree = ast.parse(Path(extract.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert "pypdf" in imported  # the walk really found the imports
    assert not [name for name in imported if name.split(".")[0] in {"flask", "werkzeug"}]


# --- type detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kind"),
    [
        ("notes.txt", "text"),
        ("README.md", "markdown"),
        ("README.markdown", "markdown"),
        ("page.html", "html"),
        ("page.htm", "html"),
        ("data.csv", "csv"),
        ("data.tsv", "csv"),
        ("data.json", "json"),
        ("NOTES.TXT", "text"),
        ("Page.HtMl", "html"),
        ("archive.tar.md", "markdown"),
    ],
)
def test_kind_comes_from_extension(filename: str, kind: str) -> None:
    assert extract_text(filename, b'{"a": 1}').kind == kind


def test_extension_wins_over_content_type() -> None:
    assert extract_text("notes.txt", b"plain", "application/pdf").kind == "text"


@pytest.mark.parametrize(
    ("filename", "content_type", "kind"),
    [
        ("README", "text/markdown", "markdown"),
        ("page", "text/html; charset=utf-8", "html"),
        ("export", "TEXT/CSV", "csv"),
        ("payload", "application/json", "json"),
        ("notes.log", "text/plain", "text"),  # unknown extension counts as "no known extension"
    ],
)
def test_content_type_is_a_hint_without_known_extension(
    filename: str, content_type: str, kind: str
) -> None:
    result = extract_text(filename, b'{"a": 1}', content_type)
    assert (result.kind, result.filename) == (kind, filename)


def test_content_type_hint_for_pdf_and_docx(hello_pdf: bytes, report_docx: bytes) -> None:
    assert extract_text("scan", hello_pdf, "application/pdf").text == "Hello PDF"
    assert extract_text("letter", report_docx, DOCX_MIME).text == REPORT_TEXT


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("report.xls", None),
        ("report.xls", "application/vnd.ms-excel"),
        ("README", None),
        ("README", "application/octet-stream"),
        ("photo.png", "image/png"),
        ("old.doc", "application/msword"),
    ],
)
def test_unsupported_type(filename: str, content_type: str | None) -> None:
    error = raises(filename, b"whatever", content_type)
    assert (error.status, error.code) == (415, "unsupported_type")
    assert error.message.startswith(f"{filename} is not a supported file type.")


def test_unsupported_type_is_reported_before_size() -> None:
    # "Wrong type" is what the visitor needs to hear first; shrinking it would not help.
    assert raises("video.mp4", b"x" * (MAX_UPLOAD_BYTES + 1)).code == "unsupported_type"


# --- filenames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("C:\\Users\\ana\\Desktop\\notes.txt", "notes.txt"),
        ("../../etc/passwd.txt", "passwd.txt"),
        ("  spaced.txt  ", "spaced.txt"),
        ("bell\x07\r\nname\x00.txt", "bellname.txt"),
        ("invoice\u202etxt.md", "invoicetxt.md"),  # right-to-left override would disguise it
        ("caf\u00e9 \u2603.txt", "caf\u00e9 \u2603.txt"),  # ordinary Unicode is kept
    ],
)
def test_filename_is_sanitised(raw: str, clean: str) -> None:
    assert extract_text(raw, b"text").filename == clean


def test_long_filename_is_cut_to_200_chars_keeping_extension() -> None:
    result = extract_text("a" * 300 + ".txt", b"text")
    assert len(result.filename) == 200
    assert result.filename == "a" * 196 + ".txt"


@pytest.mark.parametrize("raw", ["", "..", "/", "\x00\x01"])
def test_name_with_nothing_left_gets_a_placeholder(raw: str) -> None:
    assert extract_text(raw, b"text", "text/plain").filename == "upload"


# --- size and emptiness ---------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["notes.txt", "data.json", "report.docx", "scan.pdf"])
def test_empty_file(filename: str) -> None:
    error = raises(filename, b"")
    assert (error.status, error.code) == (400, "empty_file")
    assert filename in error.message


def test_file_too_large_says_the_limit() -> None:
    error = raises("big.txt", b"a" * (MAX_UPLOAD_BYTES + 1))
    assert (error.status, error.code) == (413, "file_too_large")
    assert "2 MB" in error.message


def test_file_at_the_upload_limit_is_not_too_large() -> None:
    # Exactly 2 MB is allowed through the size check; its text is then too long instead.
    assert raises("big.txt", b"a" * MAX_UPLOAD_BYTES).code == "text_too_long"


def test_text_at_the_character_limit_is_accepted() -> None:
    assert len(extract_text("long.txt", b"a" * MAX_TEXT_CHARS).text) == MAX_TEXT_CHARS


def test_text_over_the_character_limit() -> None:
    error = raises("long.txt", b"a" * (MAX_TEXT_CHARS + 1))
    assert (error.status, error.code) == (413, "text_too_long")
    assert "200,000 characters" in error.message


def test_character_limit_counts_normalised_newlines() -> None:
    # CRLF becomes one character, so this is exactly at the limit after normalising.
    data = b"a\r\n" * (MAX_TEXT_CHARS // 2)
    assert len(extract_text("crlf.txt", data).text) == MAX_TEXT_CHARS


@pytest.mark.parametrize("filename", ["blank.txt", "blank.md", "blank.json", "blank.html"])
def test_whitespace_only_text_file_is_empty(filename: str) -> None:
    error = raises(filename, b" \r\n\t\n  ")
    assert (error.status, error.code) == (400, "empty_file")
    assert "only blank space" in error.message


# --- text kinds -----------------------------------------------------------------------------


def test_utf8_text_is_returned_as_is() -> None:
    result = extract_text("notes.txt", "Grüße, 日本 🌍\n".encode())
    assert result == ExtractedDocument("notes.txt", "text", 21, "Grüße, 日本 🌍\n")


def test_utf8_bom_is_stripped_and_newlines_normalised() -> None:
    data = codecs.BOM_UTF8 + b"one\r\ntwo\rthree\n"
    result = extract_text("notes.txt", data)
    assert result.text == "one\ntwo\nthree\n"
    assert result.size == len(data)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_with_bom(encoding: str) -> None:
    bom = {
        "utf-16-le": codecs.BOM_UTF16_LE,
        "utf-16-be": codecs.BOM_UTF16_BE,
        "utf-32-le": codecs.BOM_UTF32_LE,
        "utf-32-be": codecs.BOM_UTF32_BE,
    }[encoding]
    data = bom + "Straße\r\nnext".encode(encoding)
    assert extract_text("notes.txt", data).text == "Straße\nnext"


@pytest.mark.parametrize(
    "data",
    [
        "café au lait".encode("cp1252"),  # not UTF-8, and no BOM to say otherwise
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # an image renamed to .txt
        b"abc\x00def",  # valid UTF-8, but NUL bytes mean binary
        "abc".encode("utf-16-le"),  # UTF-16 without a BOM: NULs between the letters
        codecs.BOM_UTF16_LE + b"\x00\xd8",  # UTF-16 with a lone surrogate
    ],
)
def test_not_a_text_file(data: bytes) -> None:
    error = raises("notes.txt", data)
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("notes.txt doesn't look like a text file")


def test_html_is_passed_on_as_source() -> None:
    html = "<!doctype html>\r\n<h1>Title</h1>\r\n<p>Some <b>bold</b> text.</p>"
    result = extract_text("page.html", html.encode())
    assert result.kind == "html"
    assert result.text == "<!doctype html>\n<h1>Title</h1>\n<p>Some <b>bold</b> text.</p>"


def test_markdown_and_csv_are_passed_through() -> None:
    assert extract_text("a.md", b"# Title\n\n- item\n").text == "# Title\n\n- item\n"
    tsv = extract_text("a.tsv", b"name\tcost\r\nloft\t1200\r\n")
    assert (tsv.kind, tsv.text) == ("csv", "name\tcost\nloft\t1200\n")


def test_valid_json_keeps_its_original_text() -> None:
    original = '{ "grant" :  "solar",\n  "amount": 1200 }\n'
    assert extract_text("data.json", original.encode()).text == original


def test_invalid_json_names_the_line() -> None:
    error = raises("data.json", b'{\n  "a": 1,\n  "b": oops\n}')
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("data.json is not valid JSON: Expecting value on line 3")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "number too long"),
    ],
)
def test_json_that_python_refuses_is_unreadable(data: bytes, reason: str) -> None:
    error = raises("data.json", data)
    assert (error.status, error.code) == (422, "unreadable_file")
    assert reason in error.message


# --- .docx ----------------------------------------------------------------------------------


def test_docx_headings_lists_and_tables_in_order(report_docx: bytes) -> None:
    result = extract_text("report.docx", report_docx)
    assert (result.kind, result.size) == ("docx", len(report_docx))
    assert result.text == REPORT_TEXT


@pytest.mark.parametrize(("level", "prefix"), [(3, "### "), (6, "###### "), (8, "###### ")])
def test_docx_heading_levels_stop_at_six(tmp_path: Path, level: int, prefix: str) -> None:
    document = docx.Document()
    document.add_heading("Deep", level=level)
    data = save_docx(document, tmp_path / "h.docx")
    assert extract_text("h.docx", data).text == prefix + "Deep"


def test_docx_merged_cells_are_not_repeated(tmp_path: Path) -> None:
    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    table.cell(0, 0).merge(table.cell(0, 1)).text = "Spend"
    table.cell(0, 2).text = "Year"
    for cell, value in zip(table.rows[1].cells, ["Loft\nand walls", "900", "2024"], strict=True):
        cell.text = value
    data = save_docx(document, tmp_path / "t.docx")
    assert extract_text("t.docx", data).text == "Spend\tYear\nLoft and walls\t900\t2024"


def test_docx_without_text_has_no_text(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_paragraph("   ")
    document.add_table(rows=2, cols=2)
    error = raises("blank.docx", save_docx(document, tmp_path / "blank.docx"))
    assert (error.status, error.code) == (422, "no_text")
    assert error.message.startswith("blank.docx has no text in it.")


def test_docx_text_over_the_character_limit(tmp_path: Path) -> None:
    document = docx.Document()
    for _ in range(3):
        document.add_paragraph("x" * (MAX_TEXT_CHARS // 3))
    error = raises("long.docx", save_docx(document, tmp_path / "long.docx"))
    assert (error.status, error.code) == (413, "text_too_long")


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda good: random.Random(7).randbytes(5000), id="random-bytes"),
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        pytest.param(
            lambda good: rezip(good, lambda n, c: None if n == "word/document.xml" else c),
            id="zip-without-document-xml",
        ),
        pytest.param(
            lambda good: rezip(good, lambda n, c: c[:200] if n == "word/document.xml" else c),
            id="broken-document-xml",
        ),
        pytest.param(
            lambda good: rezip(good, lambda n, c: None if n == "[Content_Types].xml" else c),
            id="no-content-types",
        ),
        pytest.param(
            # python-docx doesn't validate this root and fails with an AttributeError.
            lambda good: rezip(
                good,
                lambda n, c: (
                    c.replace(b"package/2006/content-types", b"wrong")
                    if n == "[Content_Types].xml"
                    else c
                ),
            ),
            id="content-types-wrong-namespace",
        ),
    ],
)
def test_corrupt_docx_is_unreadable(report_docx: bytes, corrupt: Callable[[bytes], bytes]) -> None:
    error = raises("report.docx", corrupt(report_docx))
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("report.docx could not be read as a Word document")


def test_zip_that_is_not_a_word_document_is_unreadable() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "hi")
    error = raises("report.docx", out.getvalue())
    assert (error.status, error.code) == (422, "unreadable_file")


def test_old_doc_or_protected_docx_says_so() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    error = raises("letter.docx", ole)
    assert (error.status, error.code) == (422, "unreadable_file")
    assert ".doc" in error.message
    assert "password" in error.message


def test_docx_that_unpacks_too_far_is_too_large(
    report_docx: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract, "MAX_DOCX_UNPACKED_BYTES", 512 * 1024)
    error = raises("report.docx", report_docx)
    assert (error.status, error.code) == (413, "file_too_large")
    assert "unpacks to more than 0.5 MB" in error.message


# --- PDF ------------------------------------------------------------------------------------


def test_hand_made_pdf_is_valid(hello_pdf: bytes) -> None:
    # Every xref entry must point at its "N 0 obj" line, and strict pypdf must accept it.
    xref_at = int(hello_pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    lines = hello_pdf[xref_at:].split(b"\n")
    count = int(lines[1].split()[1])
    for number in range(1, count):
        offset = int(lines[2 + number][:10])
        assert hello_pdf[offset:].startswith(b"%d 0 obj" % number)
    reader = PdfReader(io.BytesIO(hello_pdf), strict=True)
    assert reader.pages[0].extract_text() == "Hello PDF"


def test_pdf_text(hello_pdf: bytes) -> None:
    assert extract_text("hello.pdf", hello_pdf) == ExtractedDocument(
        filename="hello.pdf", kind="pdf", size=len(hello_pdf), text="Hello PDF"
    )


def test_pdf_pages_are_joined_by_blank_lines_and_empty_pages_skipped() -> None:
    pdf = make_pdf(text_stream("Page one"), SCANNED_STREAM, text_stream("Page (two)"))
    assert extract_text("three.pdf", pdf).text == "Page one\n\nPage (two)"


def test_scanned_pdf_has_no_text() -> None:
    error = raises("scan.pdf", make_pdf(SCANNED_STREAM, SCANNED_STREAM))
    assert (error.status, error.code) == (422, "no_text")
    assert "has no selectable text" in error.message


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_password_protected_pdf(hello_pdf: bytes, algorithm: str) -> None:
    error = raises("secret.pdf", encrypt_pdf(hello_pdf, "secret", algorithm=algorithm))
    assert (error.status, error.code) == (422, "unreadable_file")
    assert "password-protected" in error.message


def test_pdf_with_only_an_owner_password_opens(hello_pdf: bytes) -> None:
    # An empty user password means anyone may read it; only editing is restricted.
    locked = encrypt_pdf(hello_pdf, "", owner_password="owner")
    assert PdfReader(io.BytesIO(locked)).is_encrypted
    assert extract_text("locked.pdf", locked).text == "Hello PDF"


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda good: random.Random(11).randbytes(5000), id="random-bytes"),
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        pytest.param(lambda good: b"%PDF-1.4\n%%EOF\n", id="header-only"),
        pytest.param(
            lambda good: good.replace(b"Catalog", b"Katalog").replace(b"/Root 1", b"/Root 9"),
            id="no-catalog",
        ),
    ],
)
def test_corrupt_pdf_is_unreadable(hello_pdf: bytes, corrupt: Callable[[bytes], bytes]) -> None:
    error = raises("broken.pdf", corrupt(hello_pdf))
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("broken.pdf could not be read as a PDF")


def test_pdf_page_limit() -> None:
    at_limit = make_pdf(*[text_stream(f"p{i}") for i in range(MAX_PDF_PAGES)])
    assert extract_text("ok.pdf", at_limit).text.endswith(f"p{MAX_PDF_PAGES - 1}")

    error = raises("book.pdf", make_pdf(*[SCANNED_STREAM] * (MAX_PDF_PAGES + 1)))
    assert (error.status, error.code) == (413, "file_too_large")
    assert f"has {MAX_PDF_PAGES + 1} pages" in error.message
    assert f"at most {MAX_PDF_PAGES} pages" in error.message


def test_pdf_text_over_the_character_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "MAX_TEXT_CHARS", 20)
    pdf = make_pdf(text_stream("twelve chars"), text_stream("twelve chars"))
    assert raises("long.pdf", pdf).code == "text_too_long"
    assert extract_text("short.pdf", make_pdf(text_stream("twelve chars"))).text == "twelve chars"


# --- hostile input --------------------------------------------------------------------------


def _flip_bytes(rng: random.Random, data: bytes, flips: int) -> bytes:
    mutable = bytearray(data)
    for _ in range(flips):
        mutable[rng.randrange(len(mutable))] = rng.randrange(256)
    return bytes(mutable)


def _swap_alphanumerics(rng: random.Random, data: bytes, swaps: int) -> bytes:
    """Replace letters/digits with others: the XML stays well formed, its meaning doesn't."""
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    positions = [i for i, byte in enumerate(data) if byte in alphabet]
    mutable = bytearray(data)
    for position in rng.sample(positions, min(swaps, len(positions))):
        mutable[position] = rng.choice(alphabet)
    return bytes(mutable)


def _hostile_samples(report_docx: bytes, hello_pdf: bytes) -> list[bytes]:
    rng = random.Random(20240607)  # fixed seed: a failure here reproduces
    samples = [rng.randbytes(rng.randint(64, 4096)) for _ in range(6)]
    samples += [_flip_bytes(rng, hello_pdf, rng.randint(1, 20)) for _ in range(15)]
    samples += [_swap_alphanumerics(rng, hello_pdf, rng.randint(1, 10)) for _ in range(10)]
    samples += [hello_pdf[: rng.randrange(len(hello_pdf))] for _ in range(5)]
    # Damage the XML inside a well-formed zip, so python-docx (not zipfile) meets the bytes:
    # random bytes in the package XML, then subtler swaps in the body that often still parse.
    samples += [
        rezip(
            report_docx,
            lambda name, content: (
                _flip_bytes(rng, content, rng.randint(1, 30))
                if name in ("word/document.xml", "word/styles.xml", "[Content_Types].xml")
                else content
            ),
        )
        for _ in range(10)
    ]
    samples += [
        rezip(
            report_docx,
            lambda name, content: (
                _swap_alphanumerics(rng, content, rng.randint(1, 6))
                if name == "word/document.xml"
                else content
            ),
        )
        for _ in range(20)
    ]
    samples += [_flip_bytes(rng, report_docx, rng.randint(1, 5)) for _ in range(5)]
    return samples


@pytest.mark.parametrize("extension", sorted(SUPPORTED))
def test_hostile_bytes_never_crash(report_docx: bytes, hello_pdf: bytes, extension: str) -> None:
    outcomes = []
    for sample in _hostile_samples(report_docx, hello_pdf):
        try:
            result = extract_text(f"fuzz{extension}", sample)
        except ExtractionError as error:
            assert error.status == STATUS_BY_CODE[error.code]
            assert error.message.startswith(f"fuzz{extension}")
            outcomes.append(error.code)
        else:
            assert isinstance(result, ExtractedDocument)
            assert result.kind == SUPPORTED[extension]
            outcomes.append("ok")
    # Random bytes are never a valid document or UTF-8 text.
    assert outcomes[:6] == ["unreadable_file"] * 6
    if SUPPORTED[extension] in ("docx", "pdf"):
        # Some damaged files still open: the samples reach the parsers, not just the front door.
        assert "ok" in outcomes
