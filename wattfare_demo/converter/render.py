"""Markdown for display: a sanitised HTML preview and a download link.

The Markdown comes from a model that was fed an uploaded file, so it is untrusted twice
over. Two independent layers keep anything in it from running in the page:

1. markdown-it-py renders with raw HTML *off*: a `<script>` in the Markdown becomes the
   text "<script>", never a tag.
2. nh3 (the Rust `ammonia` sanitiser) then keeps only the tags Markdown produces, no
   event-handler or style attributes (so no table alignment: the page's CSP forbids
   inline styles anyway), only http(s)/mailto links, and images only from this app's
   own origin (relative URLs) or `data:image/…`: a remote image in a document must not
   tell its owner who opened it, and when.

On top of that the page's Content-Security-Policy allows no inline script and no
third-party images (see routes.py), and htmx is configured not to run script tags it swaps
in (templates/base.html).
"""

from __future__ import annotations

import base64
import re
from decimal import ROUND_DOWN, Decimal

import nh3
from markdown_it import MarkdownIt

__all__ = ["download_name", "download_url", "format_usd", "human_size", "render_preview"]

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

# Exactly what markdown-it emits for CommonMark + tables + strikethrough.
_TAGS = {
    "a",
    "blockquote",
    "br",
    "code",
    "del",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "strong",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
}
_DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|webp|avif|bmp);base64,", re.IGNORECASE)
_SCHEME_OR_HOST = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|\\\\)", re.IGNORECASE)


def _only_safe_urls(tag: str, attribute: str, value: str) -> str | None:
    """Images from this origin or data:image; links never to data: URLs."""
    compact = re.sub(r"[\x00-\x20]+", "", value)  # browsers ignore these in schemes
    if tag == "img" and attribute == "src":
        if _DATA_IMAGE.match(compact):
            return value
        return None if _SCHEME_OR_HOST.match(compact) else value
    if attribute == "href" and compact.lower().startswith("data:"):
        return None
    return value


_cleaner = nh3.Cleaner(
    tags=_TAGS,
    attributes=_ATTRIBUTES,
    attribute_filter=_only_safe_urls,
    url_schemes={"http", "https", "mailto", "data"},
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)


def render_preview(markdown: str) -> str:
    """Safe HTML for the preview pane. The result may be marked safe in a template."""
    return _cleaner.clean(_md.render(markdown))


def download_name(filename: str) -> str:
    """report.final.html -> report.final.md (the name the download button suggests)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    stem = re.sub(r"[^\w.\- ]+", "_", stem).strip(" .") or "converted"
    return f"{stem}.md"


def download_url(markdown: str) -> str:
    """A data: URL holding the Markdown, for `<a download>`: no JavaScript, no second request."""
    payload = base64.b64encode(markdown.encode("utf-8")).decode("ascii")
    return f"data:text/markdown;charset=utf-8;base64,{payload}"


def human_size(size: int) -> str:
    """1536 -> "1.5 KB"; binary units, as the 2 MB upload limit is counted."""
    if size < 1024:
        return f"{size} bytes" if size != 1 else "1 byte"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB".replace(".0 ", " ")
    return f"{size / (1024 * 1024):.1f} MB".replace(".0 ", " ")


def format_usd(amount: Decimal | float) -> str:
    """Dollars left, to 1/100 of a cent and rounded down: never more than is really left.

    Decimal("0.4998") -> "$0.4998", Decimal("0.5") -> "$0.50", Decimal("3") -> "$3.00".
    """
    cents = Decimal(str(amount)).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
    whole, _, fraction = f"{cents:.4f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"
