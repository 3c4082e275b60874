"""Turn an uploaded file into plain text for the model to convert into Markdown.

Pure Python (no Flask): the web layer calls `extract_text()` and turns an `ExtractionError`
into a response with `error.status`, `error.code` and `error.message`.

Error contract. Each code always comes with the same HTTP status, so the web layer and the
browser can rely on either:

=================  ======  =====================================================================
code               status  when
=================  ======  =====================================================================
unsupported_type   415     the extension (or, with no known extension, the content type) is not
                           one we read. Checked first: "wrong type" is the more useful answer.
empty_file         400     zero bytes, or a text-kind file (.txt/.md/.html/.csv/.json) holding
                           only whitespace: for those the bytes *are* the text, so it is empty.
file_too_large     413     more than MAX_UPLOAD_BYTES, a PDF with more than MAX_PDF_PAGES pages,
                           or a .docx that unpacks to more than MAX_DOCX_UNPACKED_BYTES.
unreadable_file    422     not decodable text, invalid JSON, a damaged/password-protected
                           .docx or PDF.
no_text            422     a .docx or PDF that opens fine but has no text (e.g. a scanned PDF).
                           422, not 400: the upload is well formed, there is just nothing to read.
text_too_long      413     the extracted text is longer than MAX_TEXT_CHARS.
=================  ======  =====================================================================

Parsers see hostile bytes, so every library call is wrapped: the exceptions a parser raises on
malformed input become `unreadable_file` (and are logged); MemoryError and the like still
propagate.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import lzma
import re
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass

import docx
from docx.document import Document as DocxDocument
from docx.exceptions import PythonDocxError
from docx.opc.exceptions import OpcError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml import etree  # python-docx's XML parser; its errors surface through python-docx
from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, PyPdfError

__all__ = [
    "MAX_DOCX_UNPACKED_BYTES",
    "MAX_PDF_PAGES",
    "MAX_TEXT_CHARS",
    "MAX_UPLOAD_BYTES",
    "STATUS_BY_CODE",
    "SUPPORTED",
    "ExtractedDocument",
    "ExtractionError",
    "extract_text",
    "sanitize_filename",
]

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 200_000  # text longer than this is too long for the model
MAX_PDF_PAGES = 200  # parsing cost grows with pages; 200 is far beyond MAX_TEXT_CHARS of prose
# A .docx is a zip: 2 MB can inflate to gigabytes. Word's own blank template is ~0.8 MB.
MAX_DOCX_UNPACKED_BYTES = 50 * 1024 * 1024
MAX_FILENAME_CHARS = 200

SUPPORTED: dict[str, str] = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".docx": "docx",
    ".pdf": "pdf",
}
TEXT_KINDS = frozenset({"text", "markdown", "html", "csv", "json"})

# Only consulted when the filename has no extension we know (browsers send what the OS says).
_KIND_BY_CONTENT_TYPE = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/html": "html",
    "text/csv": "csv",
    "application/json": "json",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}

STATUS_BY_CODE: dict[str, int] = {
    "empty_file": 400,
    "file_too_large": 413,
    "text_too_long": 413,
    "unsupported_type": 415,
    "unreadable_file": 422,
    "no_text": 422,
}

_SUPPORTED_LIST = ".txt, .md, .html, .csv, .json, .docx or .pdf"
# Old binary .doc files and password-protected .docx files are OLE compound files, not zips.
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Control, format (incl. bidi overrides that can disguise an extension), surrogate and
# line/paragraph separator characters never belong in a displayed filename.
_DROPPED_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_HEADING_STYLE = re.compile(r"heading ([1-9])")
_LIST_STYLE = re.compile(r"list (bullet|number)(?: ([2-9]))?")

# What parsers raise on malformed bytes. pypdf documents that broken files "might cause other
# Exceptions" than its own; these are the kinds pypdf, zipfile/zlib/lzma, lxml and python-docx
# raise while reading data. Programming errors like NameError/ImportError and MemoryError are
# deliberately not caught.
_MALFORMED_INPUT = (
    PyPdfError,
    PythonDocxError,
    OpcError,
    etree.LxmlError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    OSError,  # bz2 raises OSError on corrupt streams; all I/O here is in memory
    EOFError,
    ValueError,
    LookupError,  # KeyError (missing zip member, relationship), IndexError
    TypeError,
    AttributeError,  # python-docx trusts the XML shape, e.g. a [Content_Types].xml wrong root
    AssertionError,
    ArithmeticError,  # OverflowError, ZeroDivisionError from malformed numbers
    NotImplementedError,  # unknown zip compression method
    RecursionError,  # deeply nested PDF objects or JSON
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

    def __repr__(self) -> str:
        return f"ExtractionError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class ExtractedDocument:
    filename: str  # sanitised display name (basename only, control chars removed, max 200 chars)
    kind: str  # one of SUPPORTED values
    size: int  # bytes uploaded
    text: str  # the document as text to send to the model


def extract_text(filename: str, data: bytes, content_type: str | None = None) -> ExtractedDocument:
    """Read an upload into text, or raise ExtractionError (see the module docstring)."""
    name = sanitize_filename(filename)
    kind = _detect_kind(name, content_type)
    if kind is None:
        raise ExtractionError(
            "unsupported_type",
            f"{name} is not a supported file type. Upload a {_SUPPORTED_LIST} file.",
        )
    if not data:
        raise ExtractionError("empty_file", f"{name} is empty. Choose a file with some text in it.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ExtractionError(
            "file_too_large",
            f"{name} is larger than the {_megabytes(MAX_UPLOAD_BYTES)} upload limit. "
            "Upload a smaller file or split it into parts.",
        )

    if kind == "docx":
        text = _extract_docx(name, data)
    elif kind == "pdf":
        text = _extract_pdf(name, data)
    else:
        text = _extract_plain(name, data, kind)

    if not text.strip():
        # Text kinds already raised empty_file; a .docx with nothing in it lands here. (PDFs
        # raise their own no_text with advice about scans.)
        raise ExtractionError(
            "no_text", f"{name} has no text in it. Add some text and upload it again."
        )
    if len(text) > MAX_TEXT_CHARS:
        raise _text_too_long(name)
    return ExtractedDocument(filename=name, kind=kind, size=len(data), text=text)


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


def _detect_kind(name: str, content_type: str | None) -> str | None:
    dot = name.rfind(".")
    if dot != -1:
        kind = SUPPORTED.get(name[dot:].lower())
        if kind is not None:
            return kind
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        return _KIND_BY_CONTENT_TYPE.get(mime)
    return None


def _extract_plain(name: str, data: bytes, kind: str) -> str:
    text = _decode(name, data)
    if "\x00" in text:
        raise _not_text(name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ExtractionError(
            "empty_file",
            f"{name} contains only blank space. Choose a file with some text in it.",
        )
    if kind == "json":
        _check_json(name, text)
    return text  # HTML stays HTML source: turning it into Markdown is the model's job


def _decode(name: str, data: bytes) -> str:
    # Without a BOM, only UTF-8: guessing legacy code pages produces confident mojibake.
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        encoding = "utf-32"  # before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)  # these codecs drop the BOM
    except UnicodeDecodeError:
        raise _not_text(name) from None


def _not_text(name: str) -> ExtractionError:
    return ExtractionError(
        "unreadable_file",
        f"{name} doesn't look like a text file (it isn't UTF-8 or UTF-16 text). "
        "Save it as UTF-8 text and upload it again.",
    )


def _check_json(name: str, text: str) -> None:
    try:
        json.loads(text)
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
    except ValueError:
        # Python refuses integers with thousands of digits (int_max_str_digits).
        raise ExtractionError(
            "unreadable_file",
            f"{name} is not valid JSON we can read: it has a number too long to handle. "
            "Upload it as a .txt file instead.",
        ) from None


def _extract_docx(name: str, data: bytes) -> str:
    if data.startswith(_OLE_MAGIC):
        raise ExtractionError(
            "unreadable_file",
            f"{name} is either an old-style Word (.doc) file or password-protected. "
            "In Word, remove any password and save it as .docx, then upload it again.",
        )
    damaged = ExtractionError(
        "unreadable_file",
        f"{name} could not be read as a Word document; it may be damaged. "
        "Open it in Word, save it again as .docx, and upload the new file.",
    )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # zipfile never inflates a member past its declared size, so the sum is a real bound.
            unpacked = sum(info.file_size for info in archive.infolist())
    except _MALFORMED_INPUT as exc:
        logger.info("unreadable docx upload %r: %r", name, exc)
        raise damaged from None
    if unpacked > MAX_DOCX_UNPACKED_BYTES:
        raise ExtractionError(
            "file_too_large",
            f"{name} unpacks to more than {_megabytes(MAX_DOCX_UNPACKED_BYTES)}, "
            "which is more than the converter will open. Split it into smaller documents.",
        )
    try:
        document = docx.Document(io.BytesIO(data))
        return _docx_to_text(document)
    except _MALFORMED_INPUT as exc:
        logger.info("unreadable docx upload %r: %r", name, exc)
        raise damaged from None


def _docx_to_text(document: DocxDocument) -> str:
    """Body paragraphs and tables in order; headings and lists as Markdown markers.

    Headers, footers, footnotes and comments are left out: they are rarely the content a
    visitor wants converted.
    """
    blocks: list[tuple[str, bool]] = []  # (text, is list item)
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            line = _paragraph_line(item)
            if line is not None:
                blocks.append(line)
        elif isinstance(item, Table):
            rows = _table_rows(item)
            if rows:
                blocks.append(("\n".join(rows), False))

    parts: list[str] = []
    for index, (text, is_list) in enumerate(blocks):
        if index:
            # Keep consecutive list items together so they read as one list.
            parts.append("\n" if is_list and blocks[index - 1][1] else "\n\n")
        parts.append(text)
    return "".join(parts)


def _paragraph_line(paragraph: Paragraph) -> tuple[str, bool] | None:
    text = paragraph.text.strip()
    if not text:
        return None
    style = paragraph.style
    style_name = (style.name or "").strip().lower() if style is not None else ""

    if style_name == "title":
        return "# " + _one_line(text), False
    heading = _HEADING_STYLE.fullmatch(style_name)
    if heading:
        level = min(int(heading.group(1)), 6)  # Markdown stops at six levels
        return "#" * level + " " + _one_line(text), False
    listing = _LIST_STYLE.fullmatch(style_name)
    if listing:
        marker = "- " if listing.group(1) == "bullet" else "1. "
        indent = "  " * (int(listing.group(2) or 1) - 1)  # "List Bullet 2" is nested once
        return indent + marker + _one_line(text), True
    return text, False


def _table_rows(table: Table) -> list[str]:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # A horizontally merged cell is yielded once per grid column it spans.
            if cell is previous:
                continue
            previous = cell
            cells.append(_one_line(cell.text))
        if any(cells):
            rows.append("\t".join(cells))
    return rows


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _extract_pdf(name: str, data: bytes) -> str:
    try:
        reader = PdfReader(io.BytesIO(data))
        # PdfReader already tried the empty password; this tells us whether that worked.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise ExtractionError(
                "unreadable_file",
                f"{name} is password-protected, so its text can't be read. "
                "Save a copy without the password and upload that.",
            )
        page_count = len(reader.pages)
        if page_count > MAX_PDF_PAGES:
            raise ExtractionError(
                "file_too_large",
                f"{name} has {page_count} pages; the converter reads at most {MAX_PDF_PAGES} "
                "pages per PDF so each conversion stays quick. Split it into smaller PDFs.",
            )
        pages: list[str] = []
        total = 0
        for page in reader.pages:
            text = page.extract_text().replace("\x00", "")
            text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
            if text:
                pages.append(text)
                total += len(text) + 2
                if total > MAX_TEXT_CHARS:
                    raise _text_too_long(name)  # no point reading the remaining pages
    except DependencyError as exc:
        logger.warning("pdf upload %r needs a missing dependency: %s", name, exc)
        raise ExtractionError(
            "unreadable_file",
            f"{name} uses a kind of PDF encryption the converter can't open. "
            "Save a copy without protection and upload that.",
        ) from None
    except _MALFORMED_INPUT as exc:
        logger.info("unreadable pdf upload %r: %r", name, exc)
        raise ExtractionError(
            "unreadable_file",
            f"{name} could not be read as a PDF; it may be damaged. "
            "Export or print it to a new PDF and upload that.",
        ) from None
    if not pages:
        raise ExtractionError(
            "no_text",
            f"{name} has no selectable text; it is probably a scanned image. "
            "Run it through text recognition (OCR) first, or upload the text another way.",
        )
    return "\n\n".join(pages)


def _text_too_long(name: str) -> ExtractionError:
    return ExtractionError(
        "text_too_long",
        f"{name} has more than {MAX_TEXT_CHARS:,} characters of text, which is too long to "
        "convert in one go. Split it into smaller files and upload them one at a time.",
    )


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"
