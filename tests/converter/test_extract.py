"""wattfare_demo.converter.extract on real documents made at test time (tests/documents.py).

Each kind in the file-type table is read into Markdown that keeps its structure (tables
as pipe tables, lists, links, headings, footnotes); text in any common encoding is read;
damaged, hostile and empty files get the error their code promises.
"""

from __future__ import annotations

import ast
import codecs
import dataclasses
import random
import re
from pathlib import Path

import pytest

from tests import documents
from wattfare_demo.converter import extract, filetypes
from wattfare_demo.converter.extract import (
    MAX_UPLOAD_BYTES,
    READERS,
    STATUS_BY_CODE,
    ExtractedDocument,
    ExtractionError,
)


def read(name: str, data: bytes, content_type: str | None = None) -> ExtractedDocument:
    return extract.extract(name, data, content_type)


def raises(name: str, data: bytes, content_type: str | None = None) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        extract.extract(name, data, content_type)
    return caught.value


# --- the table of file types ------------------------------------------------------------


def test_every_kind_has_a_reader_and_every_extension_one_kind() -> None:
    kinds = [t.kind for t in filetypes.FILE_TYPES]
    assert len(kinds) == len(set(kinds))
    assert set(READERS) == set(kinds)
    extensions = [e for t in filetypes.FILE_TYPES for e in t.extensions]
    assert len(extensions) == len(set(extensions))
    assert all(e.startswith(".") and e == e.lower() for e in extensions)
    for required in (
        ".txt",
        ".md",
        ".html",
        ".csv",
        ".tsv",
        ".json",
        ".docx",
        ".pdf",
        ".xlsx",
        ".xls",
        ".pptx",
        ".epub",
        ".ipynb",
        ".xml",
        ".rss",
    ):
        assert required in filetypes.BY_EXTENSION


def test_the_accept_list_hint_and_message_come_from_the_table() -> None:
    assert filetypes.accept_list().split(",") == list(filetypes.BY_EXTENSION)
    assert filetypes.hint().split() == [t.extensions[0] for t in filetypes.FILE_TYPES]
    error = raises("photo.png", b"\x89PNG")
    assert (error.status, error.code) == (415, "unsupported_type")
    assert error.message == (
        f"photo.png is not a supported file type. Upload a {filetypes.supported_list()} file."
    )
    assert ".epub" in error.message and ".xlsx" in error.message


def test_each_code_has_one_status() -> None:
    assert STATUS_BY_CODE == {
        "empty_file": 400,
        "file_too_large": 413,
        "text_too_long": 413,
        "unsupported_type": 415,
        "unreadable_file": 422,
        "no_text": 422,
        "too_complex": 422,
    }


def test_extracted_document_is_frozen_and_counts_its_characters() -> None:
    result = read("notes.txt", b"hi")
    assert result == ExtractedDocument("notes.txt", "text", 2, ("hi",))
    assert (result.markdown, result.chars, result.label) == ("hi", 2, "plain text")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.sections = ()  # type: ignore[misc]


def test_the_module_does_not_import_flask() -> None:
    tree = ast.parse(Path(extract.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "pdfplumber" in imported  # the walk really found the imports
    assert not [n for n in imported if n.split(".")[0] in {"flask", "werkzeug"}]


@pytest.mark.parametrize(
    ("filename", "content_type", "kind"),
    [
        ("README", "text/markdown", "markdown"),
        ("page", "text/html; charset=utf-8", "html"),
        ("export", "TEXT/CSV", "csv"),
        ("notes.unknown", "text/plain", "text"),
        ("Page.HtMl", None, "html"),
        ("feed", "application/rss+xml", "xml"),
    ],
)
def test_the_kind_comes_from_the_extension_else_the_content_type(
    filename: str, content_type: str | None, kind: str
) -> None:
    assert read(filename, b"<a>1</a>", content_type).kind == kind


def test_the_extension_wins_over_the_content_type() -> None:
    assert read("notes.txt", b"plain", "application/pdf").kind == "text"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("C:\\Users\\ana\\Desktop\\notes.txt", "notes.txt"),
        ("../../etc/passwd.txt", "passwd.txt"),
        ("bell\x07\r\nname\x00.txt", "bellname.txt"),
        ("invoice\u202etxt.md", "invoicetxt.md"),  # right-to-left override would disguise it
        ("caf\u00e9 \u2603.txt", "caf\u00e9 \u2603.txt"),
    ],
)
def test_filenames_are_sanitised(raw: str, clean: str) -> None:
    assert read(raw, b"text").filename == clean


def test_a_long_filename_keeps_its_extension() -> None:
    assert read("a" * 300 + ".txt", b"text").filename == "a" * 196 + ".txt"


# --- Word -------------------------------------------------------------------------------


def test_word_tables_lists_links_footnotes_text_boxes_and_equations_survive() -> None:
    markdown = read("orchard.docx", documents.word_report()).markdown

    assert markdown.startswith("Apple\n\n# Orchard report")  # "Apple" is no heading
    assert "[the harvest notes](https://example.org/harvest)" in markdown
    assert "* Pruning in March\n* Picking in September" in markdown  # List Paragraph bullets
    assert "1. Weigh the crates\n2. Sell at market" in markdown
    assert "| Variety | Tonnes |\n| --- | --- |\n| Cox | 12 |\n| Gala | 30 |" in markdown
    assert "Yields are estimates" in markdown and "Measured by the orchard's own scale." in markdown
    assert "Boxed: picked by hand" in markdown
    assert "$a=r^{2}$" in markdown


def test_strict_open_xml_is_read() -> None:
    markdown = read("strict.docx", documents.word_strict()).markdown
    assert markdown == "# Strict minutes\n\nSaved as Strict Open XML."


def test_an_old_doc_or_a_protected_docx_says_so() -> None:
    error = raises("letter.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    assert (error.status, error.code) == (422, "unreadable_file")
    assert ".doc" in error.message and "password" in error.message


def test_a_zip_that_unpacks_too_far_is_refused_before_it_is_opened() -> None:
    error = raises("bomb.docx", documents.zip_claiming(0.3))
    assert (error.status, error.code) == (413, "file_too_large")
    assert "unpacks to more than 256 MB" in error.message


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda good: random.Random(7).randbytes(5000), id="random-bytes"),
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        pytest.param(
            lambda good: documents.rezip(
                good, lambda n, c: None if n == "word/document.xml" else c
            ),
            id="no-document-xml",
        ),
        pytest.param(
            lambda good: documents.rezip(
                good, lambda n, c: c[:300] if n == "word/document.xml" else c
            ),
            id="broken-document-xml",
        ),
    ],
)
def test_a_damaged_word_file_is_unreadable(damage) -> None:
    error = raises("report.docx", damage(documents.word_report()))
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("report.docx could not be read as a Word document")


# --- PDF --------------------------------------------------------------------------------


def test_pdf_pages_paragraphs_headings_and_ruled_tables() -> None:
    result = read("report.pdf", documents.pdf_report(pages=3))

    assert result.kind == "pdf"
    assert len(result.sections) == 3  # one per page: chunks split on them
    first = result.sections[0]
    assert first.startswith("# Chapter 1\n\nChapter 1 opens with a paragraph")
    paragraphs = first.split("\n\n")
    assert paragraphs[2] == "A second, shorter paragraph on page 1."  # its own paragraph
    assert "| Source | MWh | Share |\n| --- | --- | --- |\n| Plant 1.0 | 100 | 10% |" in first
    # The running header and the page numbers repeat on every page: page furniture.
    assert "ACME Energy" not in result.markdown
    assert re.search(r"^Page \d", result.markdown, re.MULTILINE) is None


def test_a_receipt_has_no_headings() -> None:
    markdown = read("receipt.pdf", documents.pdf_receipt()).markdown
    assert re.search(r"^#", markdown, re.MULTILINE) is None
    assert "\\==========================" in markdown  # a separator, escaped: not a heading
    assert "\\--------------------------" in markdown
    assert "TOTAL 6.70" in markdown


def test_a_scanned_pdf_has_no_text() -> None:
    error = raises("scan.pdf", documents.pdf_scanned())
    assert (error.status, error.code) == (422, "no_text")
    assert "scanned image" in error.message


def test_a_password_protected_pdf_says_so() -> None:
    error = raises("secret.pdf", documents.pdf_encrypted("secret"))
    assert (error.status, error.code) == (422, "unreadable_file")
    assert "password-protected" in error.message


def test_a_pdf_with_only_an_owner_password_opens() -> None:
    assert "Chapter 1" in read("locked.pdf", documents.pdf_encrypted("", "owner")).markdown


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda good: good[: len(good) // 3], id="truncated"),
        pytest.param(lambda good: b"%PDF-1.4\n%%EOF\n", id="header-only"),
        pytest.param(lambda good: random.Random(11).randbytes(5000), id="random-bytes"),
    ],
)
def test_a_damaged_pdf_is_unreadable(damage) -> None:
    error = raises("broken.pdf", damage(documents.pdf_report(pages=1)))
    assert (error.status, error.code) in {(422, "unreadable_file"), (422, "no_text")}
    assert error.message.startswith("broken.pdf")


# --- spreadsheets, slides, books, notebooks, feeds ---------------------------------------


def test_excel_workbooks_become_one_table_per_sheet() -> None:
    result = read("cities.xlsx", documents.xlsx_book(rows=2))
    assert result.sections == (
        "## Cities\n\n| City | Country | Population |\n| --- | --- | --- |\n"
        "| City 0 | France | 1000 |\n| City 1 | Peru | 1001 |",
        "## Notes\n\n| Source | Census 2020 |\n| --- | --- |",
    )


def test_old_excel_files_are_read() -> None:
    result = read("prices.xls", documents.xls_book())
    assert result.sections == (
        "## Prices\n\n| Item | Price |\n| --- | --- |\n| Tea | 2.5 |\n| Cake | 4 |",
    )


def test_powerpoint_slides_are_sections_with_their_tables() -> None:
    result = read("review.pptx", documents.pptx_deck())
    assert result.sections == (
        "# Quarterly review\nRevenue grew in every region",
        "# Numbers\n| Region | Growth |\n| --- | --- |\n| North | 12% |",
    )


def test_epub_notebooks_and_feeds() -> None:
    book = read("sea.epub", documents.epub_book()).markdown
    assert "**Title:** Sea stories" in book
    assert "# The storm\n\nThe *sea* rose at dawn.\n\n* Reef the sails\n* Bail" in book
    notes = read("analysis.ipynb", documents.notebook()).markdown
    assert notes == "# Analysis\nSome notes.\n\n```python\nprint(1 + 1)\n```"
    feed = read("news.rss", documents.RSS).markdown
    assert feed.startswith("# Harbour news")
    assert "## Ferry delayed" in feed and "Fog in the **bay**." in feed


def test_other_xml_is_shown_as_code_and_entity_bombs_are_refused() -> None:
    assert read("data.xml", b"<a><b>1</b></a>").markdown == "```xml\n<a><b>1</b></a>\n```"
    error = raises("lol.xml", documents.BILLION_LAUGHS)
    assert (error.status, error.code) == (422, "unreadable_file")


# --- text, tables and encodings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Café au lait, déjà vu, naïve façade.", "latin-1"),
        ("He said “hello” — it costs €5… naïve", "cp1252"),
        ("これは日本語のテキストです。東京は大きな都市です。", "shift_jis"),
        ("Hello, this is UTF-16 text without a byte order mark.", "utf-16-le"),
        ("Hello, this is UTF-16 text without a byte order mark.", "utf-16-be"),
        ("Grüße, 日本 🌍", "utf-8"),
    ],
)
def test_text_in_any_common_encoding_is_read(text: str, encoding: str) -> None:
    assert read("notes.txt", text.encode(encoding)).markdown == text


@pytest.mark.parametrize("bom", [codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF32_BE])
def test_a_byte_order_mark_decides_and_is_dropped(bom: bytes) -> None:
    codec = {
        codecs.BOM_UTF8: "utf-8",
        codecs.BOM_UTF16_LE: "utf-16-le",
        codecs.BOM_UTF32_BE: "utf-32-be",
    }[bom]
    assert read("notes.txt", bom + "Straße\r\nnext".encode(codec)).markdown == "Straße\nnext"


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"abc\x00def", random.Random(3).randbytes(400)],
)
def test_binary_is_not_text(data: bytes) -> None:
    error = raises("notes.txt", data)
    assert (error.status, error.code) == (422, "unreadable_file")
    assert error.message.startswith("notes.txt doesn't look like a text file")


def test_plain_text_keeps_its_structure_and_gains_none() -> None:
    text = "Total\n=====\n# not a heading\n> not a quote\n• a bullet\n<b>not a tag</b>"
    assert read("a.txt", text.encode()).markdown == (
        "Total\n\\=====\n\\# not a heading\n\\> not a quote\n- a bullet\n\\<b>not a tag\\</b>"
    )


def test_html_becomes_markdown_without_scripts() -> None:
    html = (
        "<html><head><title>T</title><script>window.pwned = 1</script></head><body>"
        "<h1>Report</h1><p>All <b>good</b>, see <a href='https://example.org/r'>this</a>.</p>"
        "<table><tr><th>Source</th><th>MWh</th></tr><tr><td>Solar</td><td>12</td></tr></table>"
        "</body></html>"
    )
    markdown = read("page.html", html.encode("cp1252")).markdown
    assert markdown.startswith("# Report\n\nAll **good**, see [this](https://example.org/r).")
    assert "| Source | MWh |\n| --- | --- |\n| Solar | 12 |" in markdown
    assert "pwned" not in markdown


@pytest.mark.parametrize(("name", "sep"), [("cities.csv", ","), ("cities.tsv", "\t")])
def test_csv_and_tsv_become_pipe_tables(name: str, sep: str) -> None:
    data = sep.join(["City", "Note"]) + "\n" + sep.join(["Lima", "big | busy"]) + "\n"
    assert read(name, data.encode()).markdown == (
        "| City | Note |\n| --- | --- |\n| Lima | big \\| busy |"
    )


@pytest.mark.parametrize(
    "data",
    [
        'Name;Price;Note\nTea;2,50;"hot; sweet"\n'.encode("cp1252"),  # European Excel
        b'sep=;\nName;Price;Note\nTea;2,50;"hot; sweet"\n',  # Excel's own separator line
    ],
)
def test_semicolon_csv_from_european_excel(data: bytes) -> None:
    assert read("prices.csv", data).markdown.split("\n")[:3] == [
        "| Name | Price | Note |",
        "| --- | --- | --- |",
        "| Tea | 2,50 | hot; sweet |",
    ]


@pytest.mark.parametrize(
    ("data", "first_row"),
    [
        (b"<html><body><table><tr><th>Item</th><th>Price</th></tr><tr><td>Tea</td>"
         b"<td>2.5</td></tr></table></body></html>", "| Item | Price |"),
        (b"Item\tPrice\nTea\t2.5\n", "| Item | Price |"),
    ],
    ids=["html-table", "tab-separated"],
)  # fmt: skip
def test_an_excel_export_that_is_not_really_xls_is_read_as_what_it_is(
    data: bytes, first_row: str
) -> None:
    markdown = read("export.xls", data).markdown
    assert markdown.startswith(first_row)
    assert "| Tea | 2.5 |" in markdown


def test_a_ten_thousand_row_csv_is_read_whole() -> None:
    rows = "\n".join(f"{i},City {i},{i * 7}" for i in range(10_000))
    markdown = read("big.csv", f"id,name,value\n{rows}\n".encode()).markdown
    assert markdown.count("\n") == 10_001  # header, rule and every row
    assert markdown.endswith("| 9999 | City 9999 | 69993 |")


def test_json_is_pretty_printed_in_a_fence() -> None:
    assert read("a.json", b'{"a":[1,2]}').markdown == (
        '```json\n{\n  "a": [\n    1,\n    2\n  ]\n}\n```'
    )


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{\n  "a": 1,\n  "b": oops\n}', "Expecting value on line 3"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "number too long"),
    ],
)
def test_json_that_cannot_be_read_says_why(data: bytes, says: str) -> None:
    error = raises("data.json", data)
    assert (error.status, error.code) == (422, "unreadable_file")
    assert says in error.message


# --- sizes and emptiness -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["notes.txt", "data.json", "report.docx", "scan.pdf"])
def test_an_empty_file_is_empty(name: str) -> None:
    error = raises(name, b"")
    assert (error.status, error.code) == (400, "empty_file")


def test_a_blank_text_file_is_empty() -> None:
    error = raises("blank.md", b" \r\n\t\n  ")
    assert (error.status, error.code) == (400, "empty_file")
    assert "only blank space" in error.message


def test_the_upload_limit_is_20_megabytes() -> None:
    assert MAX_UPLOAD_BYTES == 20 * 1024 * 1024
    error = raises("big.txt", b"a" * (MAX_UPLOAD_BYTES + 1))
    assert (error.status, error.code) == (413, "file_too_large")
    assert "20 MB" in error.message
    assert raises("video.mp4", b"x" * (MAX_UPLOAD_BYTES + 1)).code == "unsupported_type"


def test_text_beyond_what_any_conversion_takes_is_too_long() -> None:
    error = raises("long.txt", b"word " * (extract.MAX_MARKDOWN_CHARS // 5 + 1))
    assert (error.status, error.code) == (413, "text_too_long")


# --- hostile bytes ------------------------------------------------------------------------


def _samples() -> list[bytes]:
    rng = random.Random(20240607)  # fixed seed: a failure here reproduces
    good = [
        documents.word_report(),
        documents.pdf_report(pages=1),
        documents.xlsx_book(),
        documents.pptx_deck(),
        documents.epub_book(),
        documents.notebook(),
        documents.RSS,
    ]
    samples = [rng.randbytes(rng.randint(64, 2048)) for _ in range(4)]
    for data in good:
        for _ in range(4):
            mutable = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            samples.append(bytes(mutable))
        samples.append(data[: rng.randrange(len(data))])
    return samples


SAMPLES = _samples()


@pytest.mark.parametrize("kind", sorted(READERS))
def test_hostile_bytes_get_an_error_with_a_message_never_a_crash(kind: str) -> None:
    extension = filetypes.BY_KIND[kind].extensions[0]
    outcomes = []
    for sample in SAMPLES:
        try:
            result = read(f"fuzz{extension}", sample)
        except ExtractionError as error:
            assert error.status == STATUS_BY_CODE[error.code]
            assert error.message.startswith(f"fuzz{extension}")
            outcomes.append(error.code)
        else:
            assert result.kind == kind
            outcomes.append("ok")
    assert outcomes[:4] == ["unreadable_file"] * 4  # random bytes are never a document
