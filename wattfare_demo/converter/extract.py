"""Turn an uploaded file into structured Markdown for the model to tidy.

Pure Python (no Flask): routes call it through the cage (cage.py), which runs it in a
separate, resource-limited process. `extract()` returns an `ExtractedDocument` whose
`sections` are the document's natural pages (PDF pages, slides, sheets; one section for
other kinds), or raises `ExtractionError`.

Which library reads what, and why (docs/converter.md has the long version):

- markitdown's own converters, called directly (not `MarkItDown()`, whose type sniffing
  loads a neural network for every call): HTML, Word (mammoth), PowerPoint
  (python-pptx), EPUB, Jupyter notebooks and RSS/Atom feeds. Visitors get what
  markitdown gives them in a terminal: pipe tables, lists, links, footnotes, headings.
- pdfplumber (pdfminer.six) directly for PDF, page by page, so a document keeps its
  pages (chunks split on them), ruled tables become pipe tables, paragraphs are found
  from line spacing, and running headers and footers repeated on most pages are dropped.
- openpyxl (read-only, streaming) and xlrd directly for spreadsheets: markitdown would
  go through pandas, 60 MB of dependencies that hold the whole sheet in memory twice.
- csv, json and charset-normalizer for text: any encoding, never only UTF-8.

Nothing here writes a file: every parser reads from memory (the cage also forbids
writes, with RLIMIT_FSIZE = 0).

Error contract. Each code always comes with the same HTTP status:

=================  ======  =====================================================================
code               status  when
=================  ======  =====================================================================
unsupported_type   415     the extension (or, with no known extension, the content type) is not
                           one in filetypes.FILE_TYPES. Checked first.
empty_file         400     zero bytes, or a text file holding only whitespace.
file_too_large     413     more than MAX_UPLOAD_BYTES, too many pages, a zip that unpacks past
                           MAX_UNPACKED_BYTES, or a file that needs more memory than the cage
                           allows.
text_too_long      413     the Markdown is longer than MAX_MARKDOWN_CHARS.
unreadable_file    422     not decodable text, invalid JSON/XML, a damaged or
                           password-protected document.
no_text            422     a document that opens fine but has no text (e.g. a scanned PDF).
too_complex        422     reading it took longer than the cage allows (a decompression or
                           parser bomb, or a pathological file).
=================  ======  =====================================================================
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import lzma
import re
import struct
import unicodedata
import warnings
import xml.dom.minidom
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import charset_normalizer
import defusedxml
import defusedxml.minidom
import openpyxl
import pdfminer.pdfdocument
import pdfminer.pdfparser
import pdfminer.psparser
import pdfplumber
import pdfplumber.utils.exceptions
import xlrd
from lxml import etree
from markitdown import StreamInfo
from markitdown.converters import (
    DocxConverter,
    EpubConverter,
    HtmlConverter,
    IpynbConverter,
    PptxConverter,
    RssConverter,
)

from .filetypes import BY_KIND, FILE_TYPES, FileType, kind_of, supported_list

__all__ = [
    "MAX_MARKDOWN_CHARS",
    "MAX_PDF_PAGES",
    "MAX_UNPACKED_BYTES",
    "MAX_UPLOAD_BYTES",
    "READERS",
    "STATUS_BY_CODE",
    "ExtractedDocument",
    "ExtractionError",
    "decode_text",
    "extract",
    "sanitize_filename",
]

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# An upper bound on the Markdown of one file, whatever CONVERTER_MAX_REQUESTS allows:
# keeps what crosses the cage's pipe and the web worker's memory bounded.
MAX_MARKDOWN_CHARS = 4_000_000
MAX_PDF_PAGES = 2000
# A zip-based document (docx, xlsx, pptx, epub) may unpack to at most this much, in at
# most MAX_ZIP_MEMBERS members: 20 MB of zip can otherwise claim to hold terabytes.
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
MAX_ZIP_MEMBERS = 20_000
MAX_FILENAME_CHARS = 200
# A section break inside `ExtractedDocument.markdown`: never part of a document's text.
SECTION_BREAK = "\f"

STATUS_BY_CODE: dict[str, int] = {
    "empty_file": 400,
    "file_too_large": 413,
    "text_too_long": 413,
    "unsupported_type": 415,
    "unreadable_file": 422,
    "no_text": 422,
    "too_complex": 422,
}

# Control, format (incl. bidi overrides that can disguise an extension), surrogate and
# line/paragraph separator characters never belong in a displayed filename.
_DROPPED_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Old binary .doc files and password-protected Office files are OLE compound files.
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

# What parsers raise on malformed bytes. Programming errors like NameError/ImportError
# and MemoryError (the cage's memory limit) are deliberately not caught.
_MALFORMED_INPUT: tuple[type[BaseException], ...] = (
    pdfminer.psparser.PSException,
    pdfminer.pdfparser.PDFException,
    pdfminer.pdfdocument.PDFEncryptionError,
    pdfplumber.utils.exceptions.PdfminerException,
    pdfplumber.utils.exceptions.MalformedPDFException,
    etree.LxmlError,
    defusedxml.DefusedXmlException,
    xml.parsers.expat.ExpatError,
    xlrd.XLRDError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    OSError,  # bz2 raises OSError on corrupt streams; all I/O here is in memory
    EOFError,
    ValueError,  # includes UnicodeDecodeError, json.JSONDecodeError
    LookupError,  # KeyError (missing zip member, relationship), IndexError
    TypeError,
    AttributeError,  # parsers trust the XML shape
    AssertionError,
    ArithmeticError,
    NotImplementedError,  # unknown zip compression method
    RecursionError,
)


class ExtractionError(Exception):
    """An upload we can't turn into text; `message` tells the visitor what to do about it."""

    status: int
    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = STATUS_BY_CODE[code]  # KeyError here means a typo in this module
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the cage's pipe
        return (ExtractionError, (self.code, self.message))

    def __repr__(self) -> str:
        return f"ExtractionError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class ExtractedDocument:
    filename: str  # sanitised display name (basename only, control chars removed)
    kind: str  # a filetypes.FileType.kind
    size: int  # bytes uploaded
    sections: tuple[str, ...]  # Markdown: pages, slides or sheets; one for other kinds

    @property
    def markdown(self) -> str:
        return "\n\n".join(self.sections)

    @property
    def chars(self) -> int:
        return sum(len(section) for section in self.sections) + 2 * (len(self.sections) - 1)

    @property
    def label(self) -> str:
        return BY_KIND[self.kind].label


def extract(filename: str, data: bytes, content_type: str | None = None) -> ExtractedDocument:
    """Read an upload into Markdown sections, or raise ExtractionError."""
    name = sanitize_filename(filename)
    file_type = kind_of(name, content_type)
    if file_type is None:
        raise ExtractionError(
            "unsupported_type",
            f"{name} is not a supported file type. Upload a {supported_list()} file.",
        )
    if not data:
        raise ExtractionError("empty_file", f"{name} is empty. Choose a file with some text in it.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ExtractionError(
            "file_too_large",
            f"{name} is larger than the {_megabytes(MAX_UPLOAD_BYTES)} upload limit. "
            "Upload a smaller file or split it into parts.",
        )
    if file_type.zipped:
        _check_zip(name, data, file_type)
    reader = READERS[file_type.kind]
    try:
        sections = reader(name, data)
    except ExtractionError:
        raise
    except _MALFORMED_INPUT as exc:
        # The exception's type only: its text may quote the visitor's document.
        logger.info("unreadable %s upload: %s", file_type.kind, type(exc).__name__)
        raise _damaged(name, file_type) from None

    cleaned = tuple(s for s in (section.strip("\n") for section in sections) if s.strip())
    if not cleaned:
        raise ExtractionError(
            "no_text", f"{name} has no text in it. Add some text and upload it again."
        )
    document = ExtractedDocument(
        filename=name, kind=file_type.kind, size=len(data), sections=cleaned
    )
    if document.chars > MAX_MARKDOWN_CHARS:
        raise ExtractionError(
            "text_too_long",
            f"{name} has more than {MAX_MARKDOWN_CHARS:,} characters of text, far more than "
            "one conversion can take. Split it into smaller files.",
        )
    return document


def sanitize_filename(filename: str) -> str:
    """Basename only, no control/format characters, at most MAX_FILENAME_CHARS characters."""
    # Some browsers send a full Windows path; treat both separators as path separators.
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED_NAME_CATEGORIES)
    name = name.strip()
    if not name.strip("."):
        return "upload"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and len(ext) <= 10:
            # Keep the extension so the name still says what the file is.
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip() + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


# --- text and its encodings ---------------------------------------------------------

# When charset-normalizer finds several code pages equally plausible (short Western
# text reads as well in cp1250 as in cp1252), prefer the ones most files come from.
_PREFERRED_ENCODINGS = (
    "cp1252",
    "cp1251",
    "cp1253",
    "cp1250",
    "cp932",
    "gb18030",
    "big5",
    "euc_kr",
    "cp1254",
    "cp1255",
    "cp1256",
    "cp1257",
    "koi8_r",
)
_CHAOS_MARGIN = 0.1


def decode_text(name: str, data: bytes) -> str:
    """Bytes of a text file as text, in whatever encoding they are; newlines normalised."""
    text = _decode(name, data)
    if "\x00" in text:
        raise _not_text(name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ExtractionError(
            "empty_file",
            f"{name} contains only blank space. Choose a file with some text in it.",
        )
    return text


def _decode(name: str, data: bytes) -> str:
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16: its BOM starts with UTF-16-LE's
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                raise _not_text(name) from None
    utf16 = _utf16_without_bom(data)
    if utf16 is not None:
        try:
            return data.decode(utf16)
        except UnicodeDecodeError:
            raise _not_text(name) from None
    try:
        return data.decode("utf-8")  # most files; a strict decode never guesses wrong
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise _not_text(name)
    chosen = best
    for preferred in _PREFERRED_ENCODINGS:
        match = next((m for m in matches if m.encoding == preferred), None)
        if match is not None and match.chaos <= best.chaos + _CHAOS_MARGIN:
            chosen = match
            break
    return str(chosen)


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-Latin text has a NUL in every other byte."""
    sample = data[:8192]
    half = len(sample) // 2
    if half < 2:
        return None
    even = sample[0::2].count(0) / half
    odd = sample[1::2].count(0) / half
    if odd >= 0.3 and even < 0.05:
        return "utf-16-le"
    if even >= 0.3 and odd < 0.05:
        return "utf-16-be"
    return None


def _not_text(name: str) -> ExtractionError:
    return ExtractionError(
        "unreadable_file",
        f"{name} doesn't look like a text file: its bytes are not text in any encoding "
        "the converter knows. Save it as text (UTF-8) and upload it again.",
    )


# Characters that would give plain text a Markdown structure it never had: a heading,
# a quote, a setext underline, an HTML tag.
_PLAIN_LINE_START = re.compile(r"^( {0,3})(#{1,6}(?=\s|$)|>)")
_SETEXT_LINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
_BULLET_CHARS = re.compile(r"^(\s*)[•◦▪‣●○■□➢➤►]\s+")


def plain_text_to_markdown(text: str) -> str:
    """Plain text as Markdown that renders as the text: structure only where it was."""
    out: list[str] = []
    previous = ""
    for raw in text.split("\n"):
        line = raw.rstrip()
        line = _BULLET_CHARS.sub(r"\1- ", line)
        line = _PLAIN_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), line)
        if previous.strip() and _SETEXT_LINE.match(line):
            line = "\\" + line.lstrip()  # a separator line, not a heading underline
        line = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", line)
        out.append(line)
        previous = line
    return "\n".join(out)


def _read_text(name: str, data: bytes) -> list[str]:
    return [plain_text_to_markdown(decode_text(name, data))]


def _read_markdown(name: str, data: bytes) -> list[str]:
    return [decode_text(name, data)]


def _read_html(name: str, data: bytes) -> list[str]:
    html = decode_text(name, data)
    with warnings.catch_warnings():
        # bs4 warns (to stderr) about XHTML read as HTML; the result is the same.
        warnings.simplefilter("ignore")
        return [_tidy_tables(HtmlConverter().convert_string(html).markdown)]


def _read_delimited(delimiter: str) -> Callable[[str, bytes], list[str]]:
    def read(name: str, data: bytes) -> list[str]:
        text = decode_text(name, data)
        declared = _EXCEL_SEPARATOR.match(text)  # Excel's "sep=;" first line
        if declared:
            text = text[declared.end() :]
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=declared.group(1)))
            return [pipe_table(rows)]
        try:
            dialect: Any = csv.Sniffer().sniff(text[:20_000], delimiters=delimiter + ";|")
        except csv.Error:
            dialect = csv.excel_tab if delimiter == "\t" else csv.excel
        rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
        return [pipe_table(rows)]

    return read


_EXCEL_SEPARATOR = re.compile(r"\Asep=(.)\n")


def _read_json(name: str, data: bytes) -> list[str]:
    text = decode_text(name, data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExtractionError(
            "unreadable_file",
            f"{name} is not valid JSON: {exc.msg} on line {exc.lineno}, column {exc.colno}. "
            "Fix it or upload it as a .txt file.",
        ) from None
    except RecursionError:
        raise ExtractionError(
            "unreadable_file",
            f"{name} is not valid JSON we can read: it is nested too deeply. "
            "Upload it as a .txt file instead.",
        ) from None
    except ValueError:  # Python refuses integers with thousands of digits
        raise ExtractionError(
            "unreadable_file",
            f"{name} is not valid JSON we can read: it has a number too long to handle. "
            "Upload it as a .txt file instead.",
        ) from None
    try:
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
    except RecursionError:
        pretty = text.strip()
    return [fenced(pretty, "json")]


def _read_xml(name: str, data: bytes) -> list[str]:
    text = decode_text(name, data)
    try:
        # defusedxml refuses entity expansion (billion laughs) and external entities.
        document = defusedxml.minidom.parseString(text.encode("utf-8"))
    except (xml.parsers.expat.ExpatError, ValueError) as exc:
        raise ExtractionError(
            "unreadable_file",
            f"{name} is not well-formed XML ({exc}). Fix it or upload it as a .txt file.",
        ) from None
    root = document.documentElement
    if root is not None and (root.tagName == "rss" or root.localName == "feed"):
        feed = RssConverter().convert(io.BytesIO(text.encode()), StreamInfo(extension=".xml"))
        return [feed.markdown]
    return [fenced(text.strip(), "xml")]


def _read_ipynb(name: str, data: bytes) -> list[str]:
    text = decode_text(name, data)
    result = IpynbConverter().convert(io.BytesIO(text.encode("utf-8")), StreamInfo(charset="utf-8"))
    return [result.markdown]


# --- zip-based documents ------------------------------------------------------------


def _check_zip(name: str, data: bytes, file_type: FileType) -> None:
    if data.startswith(_OLE_MAGIC):
        raise ExtractionError(
            "unreadable_file",
            f"{name} is either an old-style Office file (.doc, .xls, .ppt) or "
            "password-protected. "
            f"Remove any password and save it as {file_type.extensions[0]}, then upload it "
            "again.",
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except _MALFORMED_INPUT:
        raise _damaged(name, file_type) from None
    # zipfile never inflates a member past its declared size, so the sum is a real bound.
    if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
        raise ExtractionError(
            "file_too_large",
            f"{name} unpacks to more than {_megabytes(MAX_UNPACKED_BYTES)}, which is more "
            "than the converter will open. Split it into smaller documents.",
        )


def _read_docx(name: str, data: bytes) -> list[str]:
    result = DocxConverter().convert(io.BytesIO(data), StreamInfo(extension=".docx"))
    return [_tidy_tables(result.markdown)]


def _read_pptx(name: str, data: bytes) -> list[str]:
    result = PptxConverter().convert(io.BytesIO(data), StreamInfo(extension=".pptx"))
    # markitdown marks each slide with an HTML comment; a slide is a section here.
    slides = re.split(r"^<!-- Slide number: \d+ -->$", result.markdown, flags=re.MULTILINE)
    return [_tidy_tables(slide) for slide in slides]


def _read_epub(name: str, data: bytes) -> list[str]:
    result = EpubConverter().convert(io.BytesIO(data), StreamInfo(extension=".epub"))
    return [_tidy_tables(result.markdown)]


# --- spreadsheets -------------------------------------------------------------------


def _sheet_section(title: str, rows: Iterable[Sequence[Any]]) -> str | None:
    table = [[_cell_text(value) for value in row] for row in rows]
    while table and not any(table[-1]):
        table.pop()
    if not table:
        return None
    width = max(max((i + 1 for i, v in enumerate(row) if v), default=0) for row in table)
    table = [row[:width] for row in table]
    while table and not any(table[0]):
        table.pop(0)
    return f"## {escape_inline(title)}\n\n{pipe_table(table)}"


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_xlsx(name: str, data: bytes) -> list[str]:
    # read_only streams rows from the XML instead of building every cell object first.
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sections = [
            _sheet_section(sheet.title, sheet.iter_rows(values_only=True))
            for sheet in workbook.worksheets
        ]
    finally:
        workbook.close()
    return [s for s in sections if s]


def _read_xls(name: str, data: bytes) -> list[str]:
    if not data.startswith(_OLE_MAGIC):
        # Many "Excel exports" from web apps are an HTML table, a newer .xlsx, or tab-
        # separated text saved as .xls; Excel opens them all, so the converter does too.
        if data.startswith(b"PK\x03\x04"):
            _check_zip(name, data, BY_KIND["xlsx"])
            return _read_xlsx(name, data)
        head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if head.startswith((b"<!doctype", b"<html", b"<table", b"<?xml", b"<meta")):
            return _read_html(name, data)
        if b"\t" in data[:4096] and b"\x00" not in data[:4096]:
            return _read_delimited("\t")(name, data)
        raise _damaged(name, BY_KIND["xls"])
    book = xlrd.open_workbook(file_contents=data, on_demand=True)
    sections = []
    for index in range(book.nsheets):
        sheet = book.sheet_by_index(index)
        rows = (sheet.row_values(r) for r in range(sheet.nrows))
        sections.append(_sheet_section(sheet.name, rows))
        book.unload_sheet(index)
    return [s for s in sections if s]


# --- PDF ----------------------------------------------------------------------------

# How much larger than the usual line gap a gap must be to start a new paragraph.
_PARAGRAPH_GAP = 1.5
_PAGE_NUMBER = re.compile(r"^\W*(?:page\s*)?\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?\W*$", re.IGNORECASE)


def _read_pdf(name: str, data: bytes) -> list[str]:
    try:
        pages = _pdf_pages(name, data)
    except (
        pdfminer.pdfdocument.PDFPasswordIncorrect,
        pdfplumber.utils.exceptions.PdfminerException,
    ) as exc:
        cause = exc.args[0] if exc.args else None
        if isinstance(exc, pdfminer.pdfdocument.PDFPasswordIncorrect) or isinstance(
            cause, pdfminer.pdfdocument.PDFPasswordIncorrect
        ):
            raise ExtractionError(
                "unreadable_file",
                f"{name} is password-protected, so its text can't be read. "
                "Save a copy without the password and upload that.",
            ) from None
        raise
    if not any(pages):
        raise ExtractionError(
            "no_text",
            f"{name} has no selectable text; it is probably a scanned image. "
            "Run it through text recognition (OCR) first, or upload the text another way.",
        )
    return ["\n\n".join(blocks) for blocks in _drop_page_furniture(pages)]


def _pdf_pages(name: str, data: bytes) -> list[list[str]]:
    pages: list[list[str]] = []
    with pdfplumber.open(io.BytesIO(data)) as pdf:
        count = len(pdf.pages)
        if count > MAX_PDF_PAGES:
            raise ExtractionError(
                "file_too_large",
                f"{name} has {count:,} pages; the converter reads at most {MAX_PDF_PAGES:,} "
                "pages per PDF. Split it into smaller PDFs.",
            )
        for page in pdf.pages:
            pages.append(_pdf_page_blocks(page))
            page.close()  # pdfplumber caches every character of a page until closed
    return pages


def _pdf_page_blocks(page: Any) -> list[str]:
    """A page as Markdown blocks, top to bottom: paragraphs and pipe tables."""
    placed: list[tuple[float, str]] = []
    tables = page.find_tables()
    boxes = [table.bbox for table in tables]
    for table in tables:
        rows = [[" ".join((cell or "").split()) for cell in row] for row in table.extract()]
        rows = [row for row in rows if any(row)]
        if len(rows) >= 2 and max(len(row) for row in rows) >= 2:
            placed.append((table.bbox[1], pipe_table(rows)))

    def outside_tables(obj: dict[str, Any]) -> bool:
        x = (obj.get("x0", 0) + obj.get("x1", 0)) / 2
        y = (obj.get("top", 0) + obj.get("bottom", 0)) / 2
        return not any(x0 <= x <= x1 and top <= y <= bottom for x0, top, x1, bottom in boxes)

    text_page = page.filter(outside_tables) if boxes else page
    lines = text_page.extract_text_lines(layout=False, strip=True, return_chars=False)
    placed.extend(_paragraphs(lines))
    placed.sort(key=lambda item: item[0])
    return [block for _, block in placed]


def _paragraphs(lines: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """Lines grouped into paragraphs wherever the gap between them is unusually large."""
    lines = [line for line in lines if line["text"].strip()]
    if not lines:
        return []
    gaps = [b["top"] - a["bottom"] for a, b in itertools.pairwise(lines)]
    positive = sorted(g for g in gaps if g > 0)
    usual = positive[len(positive) // 2] if positive else 0.0
    heights = sorted(line["bottom"] - line["top"] for line in lines)
    height = heights[len(heights) // 2]
    threshold = max(usual * _PARAGRAPH_GAP, height * 0.6)
    out: list[tuple[float, str]] = []
    current: list[str] = []
    top = lines[0]["top"]
    for index, line in enumerate(lines):
        level = _heading_level(line, height)
        if current and (
            level or (index and (gaps[index - 1] > threshold or gaps[index - 1] < -height))
        ):
            out.append((top, "\n".join(current)))
            current, top = [], line["top"]
        if level:
            out.append((line["top"], "#" * level + " " + escape_inline(line["text"])))
            top = line["top"]
            continue
        current.append(line["text"])
    if current:
        out.append((top, "\n".join(current)))
    # Plain text as Markdown per paragraph: a "=====" line under a line is a separator.
    return [
        (top, plain_text_to_markdown(text)) if not text.startswith("#") else (top, text)
        for top, text in out
    ]


def _heading_level(line: dict[str, Any], body_height: float) -> int:
    """Text set clearly larger than the page's body text, on one short line, is a heading."""
    text = line["text"].strip()
    if len(text) > 100 or not re.search(r"[^\W\d_]", text) or body_height <= 0:
        return 0
    ratio = (line["bottom"] - line["top"]) / body_height
    return 1 if ratio >= 1.6 else 2 if ratio >= 1.3 else 3 if ratio >= 1.15 else 0


def _furniture_key(block: str) -> str:
    return re.sub(r"\d+", "#", " ".join(block.split()).lower())


def _drop_page_furniture(pages: list[list[str]]) -> list[list[str]]:
    """Drop running headers and footers: a first or last block that repeats (numbers
    aside) on most pages, and bare page numbers."""
    if len(pages) < 3:
        return pages
    edges = Counter()
    for blocks in pages:
        for block in {*blocks[:1], *blocks[-1:]}:
            if len(block) <= 120:
                edges[_furniture_key(block)] += 1
    repeated = {key for key, seen in edges.items() if seen >= max(3, len(pages) // 2)}
    cleaned = []
    for blocks in pages:
        kept = list(blocks)
        for position in (0, -1):
            while kept and (
                _furniture_key(kept[position]) in repeated or _PAGE_NUMBER.match(kept[position])
            ):
                kept.pop(position)
        cleaned.append(kept)
    return cleaned


# --- Markdown building blocks -------------------------------------------------------

_ESCAPE_INLINE = re.compile(r"[\\`*_\[\]<>|#]")


def escape_inline(text: str) -> str:
    return _ESCAPE_INLINE.sub(lambda m: "\\" + m.group(0), " ".join(text.split()))


def pipe_table(rows: Sequence[Sequence[str]]) -> str:
    """A GitHub pipe table; the first row is the header."""
    rows = [list(row) for row in rows if any(str(cell).strip() for cell in row)]
    if not rows:
        return ""
    width = max(len(row) for row in rows)

    def line(cells: list[str]) -> str:
        cells = [_table_cell(cell) for cell in cells] + [""] * (width - len(cells))
        return "| " + " | ".join(cells) + " |"

    separator = "| " + " | ".join(["---"] * width) + " |"
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


def _table_cell(value: str) -> str:
    text = " ".join(str(value).split())
    return re.sub(r"(?<!\\)\|", r"\\|", text.replace("<", "\\<"))


_EMPTY_HEADER = re.compile(r"^\|(?:\s*\|)+\s*$")
_TABLE_RULE = re.compile(r"^\|(?:\s*:?-{3,}:?\s*\|)+\s*$")


def _tidy_tables(markdown: str) -> str:
    """A pipe table whose header row is empty (Word tables have no header row) gets its
    first row as the header."""
    lines = markdown.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if (
            _EMPTY_HEADER.match(line.strip())
            and index + 2 < len(lines)
            and _TABLE_RULE.match(lines[index + 1].strip())
            and lines[index + 2].lstrip().startswith("|")
        ):
            out.extend([lines[index + 2], lines[index + 1]])
            index += 3
            continue
        out.append(line)
        index += 1
    return "\n".join(out)


def fenced(code: str, info: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{code}\n{fence}"


def _damaged(name: str, file_type: FileType) -> ExtractionError:
    advice = {
        "docx": "Open it in Word, save it again as .docx, and upload the new file.",
        "pdf": "Export or print it to a new PDF and upload that.",
    }.get(file_type.kind, f"Save it again as {file_type.extensions[0]} and upload the new file.")
    article = "an" if file_type.label[0].lower() in "aeiou" else "a"
    return ExtractionError(
        "unreadable_file",
        f"{name} could not be read as {article} {file_type.label}; it may be damaged. {advice}",
    )


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


READERS: dict[str, Callable[[str, bytes], list[str]]] = {
    "text": _read_text,
    "markdown": _read_markdown,
    "html": _read_html,
    "csv": _read_delimited(","),
    "tsv": _read_delimited("\t"),
    "json": _read_json,
    "xml": _read_xml,
    "ipynb": _read_ipynb,
    "docx": _read_docx,
    "pdf": _read_pdf,
    "xlsx": _read_xlsx,
    "xls": _read_xls,
    "pptx": _read_pptx,
    "epub": _read_epub,
}
# One reader per kind in the table, and no reader for a kind it doesn't list.
assert READERS.keys() == {t.kind for t in FILE_TYPES}, "filetypes.py and READERS disagree"
