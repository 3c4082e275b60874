"""`local/markdown`'s HTML reader: an HTML document or fragment as Markdown.

The tree comes from lxml's HTML parser (libxml2, in C: about 4x faster than the
pure-Python `html.parser` on the benchmark's document, and the tree-building is what a
metered call paid for); it closes what browsers close implicitly. Headings,
paragraphs, nested lists, links, images, emphasis, code, blockquotes, rules, line breaks
and pipe tables;
script, style, template, head and other non-content elements are dropped, and no raw
HTML survives (a literal "<" in text is escaped). For callers of the raw API who send
HTML; the demo converter sends Markdown it extracted itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from typing import Any
from urllib.parse import quote, unquote

from lxml import etree  # type: ignore[import-untyped]  # no stubs pinned: lxml-stubs lags lxml 6

from .local_markdown import (
    SPACES,
    escape,
    escape_line_start,
    fenced,
    normalise_markdown,
    pipe_table,
)

__all__ = ["html_to_markdown"]


def _tags(names: str) -> frozenset[str]:
    return frozenset(names.split())


# Not content: dropped with everything inside them.
_DROP = _tags(
    "script style template head title noscript iframe object embed svg math canvas "
    "select textarea button audio video map datalist"
)
_VOID = _tags("area base br col embed hr img input link meta param source track wbr")
# Blocks that only separate their content from what is around it.
_CONTAINERS = _tags(
    "html body main div section article aside header footer nav p address figure "
    "figcaption details summary fieldset legend form center hgroup dialog search dl "
    "dd caption li tbody thead tfoot tr td th"
)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    _CONTAINERS | _HEADINGS.keys() | {"ul", "ol", "menu", "pre", "blockquote", "hr", "table", "dt"}
)
_HEAD_CONTENT = _tags("meta link title style script base noscript template")
_LIST_BLOCK = re.compile(r"(?:-|\d{1,9}\.) ")
_MAX_DEPTH = 100  # deeper markup is flattened: keeps rendering recursion bounded


class _Node:
    __slots__ = ("attrs", "children", "tag")

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[_Node | str] = []


# libxml2 stops at 2048 open elements even with huge_tree (256 without), dropping the
# rest of the document; below _MAX_DEPTH we flatten anyway, so a document that deep is
# read as its plain text instead (see _text_only).
_BROKEN_BR = re.compile(r"</br\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")


def _tree(html: str) -> _Node:
    """The document as a _Node tree (under "#root"); an empty one if nothing parses."""
    root = _Node("#root", {})
    # Browsers read a stray </br> as <br>; libxml2 ignores it.
    html = _BROKEN_BR.sub("<br>", html)
    # One parser per call (~2 µs): lxml parsers and their error logs are not to be shared
    # between threads. Comments and processing instructions are not content; no network.
    # huge_tree lifts libxml2's text-size limits and its depth limit to 2048.
    # The text is already decoded: UTF-8 bytes with the encoding fixed, so neither an
    # <?xml encoding=…?> declaration (lxml refuses it in a str) nor a <meta charset>
    # re-decodes it. A lone surrogate becomes U+FFFD, as in browsers.
    parser = etree.HTMLParser(
        remove_comments=True,
        remove_pis=True,
        no_network=True,
        huge_tree=True,
        recover=True,
        encoding="utf-8",
    )
    try:
        element = etree.fromstring(html.encode("utf-8", "surrogatepass"), parser)
    except (etree.ParserError, ValueError):  # nothing but whitespace or comments
        return root
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        root.children.append(_text_only(html))
    elif element is not None:
        _append(root, element, 1)
    return root


def _text_only(html: str) -> str:
    """The text of markup too deep for libxml2: tags dropped, entities decoded. One
    linear regex and no recursion (a pattern pairing <script> with </script> would be
    quadratic on many unclosed ones); the text of scripts stays, escaped like any text."""
    return unescape(_TAG.sub(" ", html))


def _append(parent: _Node, element: Any, depth: int) -> None:
    """`element` (and its tail) as the last children of `parent`."""
    tag = element.tag
    if isinstance(tag, str):  # not an entity or other non-element node
        node = _Node(tag.lower(), dict(element.attrib))
        parent.children.append(node)
        if depth >= _MAX_DEPTH:
            _flatten(node, element)
        else:
            if element.text:
                node.children.append(element.text)
            for child in element:
                _append(node, child, depth + 1)
    if element.tail:
        parent.children.append(element.tail)


def _flatten(node: _Node, element: Any) -> None:
    """Everything below `element` as `node`'s children, without nesting: markup deeper
    than _MAX_DEPTH keeps its text and void elements but not its structure, and walking
    it needs no recursion."""
    if element.text:
        node.children.append(element.text)
    for descendant in element.iterdescendants():
        tag = descendant.tag
        if isinstance(tag, str):
            node.children.append(_Node(tag.lower(), dict(descendant.attrib)))
            if descendant.text:
                node.children.append(descendant.text)
        if descendant.tail:
            node.children.append(descendant.tail)


def html_to_markdown(html: str) -> str:
    """Markdown for an HTML document or fragment."""
    return normalise_markdown("\n\n".join(_Renderer().blocks(_tree(html))))


def _wrap(inner: str, marker: str) -> str:
    """`marker` around the text, with the surrounding spaces kept outside it."""
    core = inner.strip(" \n")
    if not core:
        return inner
    lead = " " if inner[:1] in (" ", "\n") else ""
    trail = " " if inner[-1:] in (" ", "\n") else ""
    return f"{lead}{marker}{core}{marker}{trail}"


def _url(value: str, *, image: bool = False) -> str | None:
    """A link destination that cannot break out of `(...)`, or None if it is unsafe."""
    compact = re.sub(r"[\x00-\x20]+", "", value).lower()  # browsers ignore these in schemes
    if not compact or compact.startswith(("javascript:", "vbscript:")):
        return None
    if compact.startswith("data:") and not (image and compact.startswith("data:image/")):
        return None
    # Spaces, parentheses and angle brackets are percent-encoded; the rest stays readable.
    return quote(value.strip(), safe="/:?#[]@!$&'*+,;=%~")


class _Renderer:
    """Walks the tree: block elements become Markdown blocks, the rest inline text."""

    def __init__(self) -> None:
        self.open_markers: set[str] = set()
        self.handlers: dict[str, Callable[[_Node, list[str]], None]] = {
            "ul": self._list,
            "ol": self._list,
            "menu": self._list,
            "pre": self._pre,
            "blockquote": self._blockquote,
            "hr": lambda node, out: out.append("---"),
            "table": self._table,
            "dt": self._term,
            **{tag: self._heading for tag in _HEADINGS},
        }

    def blocks(self, node: _Node) -> list[str]:
        out: list[str] = []
        buffer: list[str] = []
        self._walk(node, out, buffer)
        self._flush(out, buffer)
        return out

    def _walk(self, node: _Node, out: list[str], buffer: list[str]) -> None:
        for child in node.children:
            if isinstance(child, str):
                buffer.append(escape(SPACES.sub(" ", child)))
                continue
            tag = child.tag
            if tag in _DROP:
                continue
            handler = self.handlers.get(tag)
            if handler is not None:
                self._flush(out, buffer)
                handler(child, out)
            elif tag in _CONTAINERS:
                self._flush(out, buffer)
                self._walk(child, out, buffer)
                self._flush(out, buffer)
            elif tag in _INLINE or tag in _VOID:
                buffer.append(self._inline(child))
            else:  # custom or unknown elements are transparent
                self._walk(child, out, buffer)

    @staticmethod
    def _flush(out: list[str], buffer: list[str]) -> None:
        """The buffered inline text as one paragraph; "\\n" marks a <br>."""
        if not buffer:
            return
        text = "".join(buffer)
        buffer.clear()
        lines = [re.sub(" {2,}", " ", line).strip() for line in text.split("\n")]
        lines = [escape_line_start(line) for line in lines if line]
        if lines:
            # A backslash before the newline is CommonMark's hard break; unlike two
            # trailing spaces it survives trimming.
            out.append("\\\n".join(lines))

    def _inline(self, node: _Node) -> str:
        tag = node.tag
        if tag in _DROP:
            return ""
        if tag == "br":
            return "\n"
        if tag == "img":
            src = _url(node.attrs.get("src", ""), image=True)
            if src is None:
                return ""
            alt = escape(SPACES.sub(" ", node.attrs.get("alt", "")).strip())
            return f"![{alt}]({src})"
        if tag in ("code", "kbd", "samp", "tt", "var"):
            code = SPACES.sub(" ", _raw_text(node))
            if not code.strip():
                return code
            ticks = "`" * (max((len(r) for r in re.findall(r"`+", code)), default=0) + 1)
            pad = " " if code[0] == "`" or code[-1] == "`" else ""
            return f"{ticks}{pad}{code}{pad}{ticks}"
        if tag in _EMPHASIS:
            return self._emphasis(node, _EMPHASIS[tag])
        inner = self._inline_children(node)
        if tag == "a":
            href = _url(node.attrs.get("href", ""))
            label = inner.replace("\n", " ").strip()
            if href is None:
                return inner
            if not label:  # an icon-only link: say where it goes
                title = node.attrs.get("aria-label") or node.attrs.get("title") or unquote(href)
                label = escape(SPACES.sub(" ", title).strip())
            lead = " " if inner[:1] in (" ", "\n") else ""
            trail = " " if inner[-1:] in (" ", "\n") else ""
            return f"{lead}[{label}]({href}){trail}"
        if tag == "q":
            return f"“{inner.strip()}”"
        if tag in _BLOCKS:  # a block inside inline content (a card link, a table cell)
            return f" {inner} "
        return inner

    def _emphasis(self, node: _Node, marker: str) -> str:
        # <b> inside <b> would give "****x****": the inner one adds nothing anyway.
        if marker in self.open_markers:
            return self._inline_children(node)
        self.open_markers.add(marker)
        try:
            return _wrap(self._inline_children(node), marker)
        finally:
            self.open_markers.discard(marker)

    def _inline_children(self, node: _Node) -> str:
        parts = []
        for child in node.children:
            if isinstance(child, str):
                parts.append(escape(SPACES.sub(" ", child)))
            else:
                parts.append(self._inline(child))
        return "".join(parts)

    def _line(self, node: _Node) -> str:
        """Inline content on one line: for headings, table cells and terms."""
        return re.sub(r"\s{2,}", " ", self._inline_children(node).replace("\n", " ")).strip()

    def _term(self, node: _Node, out: list[str]) -> None:
        text = self._line(node)
        if text:
            out.append(_wrap(text, "**"))

    def _heading(self, node: _Node, out: list[str]) -> None:
        text = self._line(node)
        if text:
            out.append("#" * _HEADINGS[node.tag] + " " + text)

    def _list(self, node: _Node, out: list[str]) -> None:
        items: list[list[str]] = []
        for child in node.children:
            if isinstance(child, str):
                if child.strip():
                    items.append([escape(SPACES.sub(" ", child).strip())])
            elif child.tag == "li":
                items.append(self.blocks(child))
            elif child.tag in ("ul", "ol") and items:  # <ul><li>a</li><ul>…</ul></ul>
                self._list(child, items[-1])
            elif child.tag not in _DROP:
                wrapper = _Node("#item", {})
                wrapper.children.append(child)
                items.append(self.blocks(wrapper))
        try:
            number = min(max(int(node.attrs.get("start", "1")), 0), 999_999_000)
        except ValueError:
            number = 1
        lines: list[str] = []
        for blocks in items:
            marker = f"{number}." if node.tag == "ol" else "-"
            number += 1
            if not blocks:
                continue
            body = blocks[0]
            for block in blocks[1:]:
                # A nested list hugs its item's text; other blocks keep a blank line.
                tight = _LIST_BLOCK.match(block) is not None
                body += ("\n" if tight else "\n\n") + block
            indent = " " * (len(marker) + 1)
            first, *rest = body.split("\n")
            lines.append(f"{marker} {first}")
            lines.extend(indent + line if line else "" for line in rest)
        if lines:
            out.append("\n".join(lines))

    def _pre(self, node: _Node, out: list[str]) -> None:
        code = _raw_text(node)
        code = code[1:] if code.startswith("\n") else code  # HTML ignores that newline
        code = code.rstrip()
        if not code.strip():
            return
        language = ""
        for candidate in [node, *(c for c in node.children if isinstance(c, _Node))]:
            match = re.search(r"\b(?:language|lang)-([\w+#.-]+)", candidate.attrs.get("class", ""))
            if match:
                language = match.group(1)
                break
        out.append(fenced(code, language))

    def _blockquote(self, node: _Node, out: list[str]) -> None:
        inner = "\n\n".join(self.blocks(node))
        if inner:
            out.append("\n".join(f"> {line}" if line else ">" for line in inner.split("\n")))

    def _table(self, node: _Node, out: list[str]) -> None:
        rows: list[list[str]] = []
        header_index: int | None = None

        def collect(parent: _Node, in_head: bool) -> None:
            nonlocal header_index
            for child in parent.children:
                if not isinstance(child, _Node):
                    continue
                if child.tag in ("thead", "tbody", "tfoot"):
                    collect(child, child.tag == "thead")
                elif child.tag == "caption":
                    caption = self._line(child)
                    if caption:
                        out.append(caption)
                elif child.tag == "tr":
                    cells: list[str] = []
                    all_th = True
                    for cell in child.children:
                        if isinstance(cell, _Node) and cell.tag in ("td", "th"):
                            all_th = all_th and cell.tag == "th"
                            cells.append(self._line(cell))
                            span = cell.attrs.get("colspan", "1")
                            extra = int(span) - 1 if span.isdigit() else 0
                            cells.extend([""] * min(extra, 50))
                    if cells:
                        if header_index is None and (in_head or all_th):
                            header_index = len(rows)
                        rows.append(cells)

        collect(node, False)
        if not rows:
            return
        if header_index:  # the header row goes first, wherever it was found
            rows.insert(0, rows.pop(header_index))
        out.append(pipe_table(rows))


_EMPHASIS = {
    "strong": "**",
    "b": "**",
    "em": "*",
    "i": "*",
    "cite": "*",
    "dfn": "*",
    "del": "~~",
    "s": "~~",
    "strike": "~~",
}
_INLINE = _tags(
    "a abbr b bdi bdo big cite code data del dfn em font i ins kbd label mark nobr q "
    "s samp small span strike strong sub sup time tt u var picture output slot"
)


def _raw_text(node: _Node) -> str:
    """All text below a node, whitespace kept (for code); <br> is a newline."""
    parts: list[str] = []
    for child in node.children:
        if isinstance(child, str):
            parts.append(child)
        elif child.tag == "br":
            parts.append("\n")
        elif child.tag not in _DROP:
            parts.append(_raw_text(child))
    return "".join(parts)
