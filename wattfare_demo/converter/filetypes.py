"""The one table of file types the converter reads.

Everything that names file types derives from `FILE_TYPES`: the page's `accept` list and
its hint (templates/index.html via routes.py), the messages that list what is supported
(extract.py), the detection of an upload's kind, and the dispatch to its reader
(`extract.READERS` has one reader per `kind`, checked against this table at import).

A kind is read the same way whatever extension or content type brought it in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BY_EXTENSION",
    "BY_MIME",
    "FILE_TYPES",
    "FileType",
    "accept_list",
    "hint",
    "kind_of",
    "supported_list",
]


@dataclass(frozen=True)
class FileType:
    kind: str  # the reader's key; also what /api/convert/plan reports as "kind"
    label: str  # for people: "Word document"
    extensions: tuple[str, ...]  # lower case, with the dot; the first is the usual one
    mimes: tuple[str, ...] = ()  # content types that mean this kind without an extension
    text: bool = False  # a text format: JSON callers may send it as a string, not base64
    zipped: bool = False  # an Office Open XML / EPUB zip (checked for zip bombs)


FILE_TYPES: tuple[FileType, ...] = (
    FileType("text", "plain text", (".txt", ".text", ".log"), ("text/plain",), text=True),
    FileType("markdown", "Markdown", (".md", ".markdown"), ("text/markdown",), text=True),
    FileType(
        "html",
        "web page",
        (".html", ".htm", ".xhtml"),
        ("text/html", "application/xhtml+xml"),
        text=True,
    ),
    FileType("csv", "CSV table", (".csv",), ("text/csv",), text=True),
    FileType("tsv", "TSV table", (".tsv", ".tab"), ("text/tab-separated-values",), text=True),
    FileType("json", "JSON", (".json",), ("application/json",), text=True),
    FileType(
        "xml",
        "XML or RSS/Atom feed",
        (".xml", ".rss", ".atom"),
        ("application/xml", "text/xml", "application/rss+xml", "application/atom+xml"),
        text=True,
    ),
    FileType("ipynb", "Jupyter notebook", (".ipynb",), ("application/x-ipynb+json",), text=True),
    FileType(
        "docx",
        "Word document",
        (".docx",),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
        zipped=True,
    ),
    FileType("pdf", "PDF", (".pdf",), ("application/pdf", "application/x-pdf")),
    FileType(
        "xlsx",
        "Excel workbook",
        (".xlsx", ".xlsm"),
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",),
        zipped=True,
    ),
    FileType("xls", "Excel 97-2003 workbook", (".xls",), ("application/vnd.ms-excel",)),
    FileType(
        "pptx",
        "PowerPoint presentation",
        (".pptx",),
        ("application/vnd.openxmlformats-officedocument.presentationml.presentation",),
        zipped=True,
    ),
    FileType("epub", "EPUB e-book", (".epub",), ("application/epub+zip",), zipped=True),
)

BY_KIND: dict[str, FileType] = {t.kind: t for t in FILE_TYPES}
BY_EXTENSION: dict[str, FileType] = {ext: t for t in FILE_TYPES for ext in t.extensions}
BY_MIME: dict[str, FileType] = {mime: t for t in FILE_TYPES for mime in t.mimes}


def kind_of(name: str, content_type: str | None) -> FileType | None:
    """The file's type by its extension, else by its content type, else None."""
    dot = name.rfind(".")
    if dot != -1:
        found = BY_EXTENSION.get(name[dot:].lower())
        if found is not None:
            return found
    if content_type:
        return BY_MIME.get(content_type.split(";", 1)[0].strip().lower())
    return None


def accept_list() -> str:
    """The file input's `accept` attribute: every extension, comma-separated."""
    return ",".join(BY_EXTENSION)


def hint() -> str:
    """The page's short list under the drop zone: each kind's usual extension."""
    return " ".join(t.extensions[0] for t in FILE_TYPES)


def supported_list() -> str:
    """For messages: ".txt, .md, … or .epub" (each kind's usual extension)."""
    usual = [t.extensions[0] for t in FILE_TYPES]
    return ", ".join(usual[:-1]) + " or " + usual[-1]
