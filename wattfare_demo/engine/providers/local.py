"""`local/markdown`: the offline default model. It converts a document to Markdown.

No network, no weights, no randomness: the same request always gives the same text and
the same usage, so grants, holds and dollar caps can be exercised end to end offline.

The document is the content of the LAST user message (a string, or OpenAI content parts
whose "text" parts are joined with newlines). A leading instruction line such as
"Convert this document to markdown:" is dropped. The rest is sniffed, in this order:

1. JSON (an object or array that parses): a fenced ```json block, indent 2.
2. HTML (starts with a tag): headings, paragraphs, nested lists, links, images,
   emphasis, code, blockquotes, rules, line breaks and pipe tables. script, style,
   template, head and other non-content elements are dropped; no raw HTML survives
   (a literal "<" in text is escaped). Only `html.parser` from the standard library.
3. Markdown already (headings, fences, tables, links, emphasis, quotes, or two list
   lines): normalised, i.e. trailing spaces trimmed and at most one blank line between
   blocks; raw HTML tags outside code are escaped, as everywhere else.
4. HTML again (text that merely contains a couple of well-known tags).
5. CSV/TSV (the same tab, comma or semicolon count on every line, >= 2 columns, >= 2
   rows): a pipe table with the first row as header.
6. Plain text: paragraphs; a short first line followed by a blank line becomes a
   `# Title`; bullet-like lines (-, *, +, •, 1.) become list items.

Token counting (used for billing, so it is exact and deterministic):

    count_tokens(text) = len(re.findall(r"\\w+|[^\\w\\s]", text))

one token per run of word characters and one per punctuation/symbol character;
whitespace is free. Prompt tokens = sum over ALL messages of count_tokens(content text)
+ 4 per message (role overhead). Completion tokens = count_tokens(output text). The rule
is prefix-stable: cutting a text right after its n-th token leaves exactly n tokens,
which is how `max_tokens` truncation and streamed running totals stay exact.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote

from .base import ChatRequest, Completion, Delta, StreamEnd, StreamEvent

__all__ = ["MODEL_ID", "LocalMarkdownProvider", "convert_to_markdown", "count_tokens"]

MODEL_ID = "local/markdown"
MESSAGE_OVERHEAD_TOKENS = 4  # per message, for the role, like chat models bill it

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Words (runs of \\w) plus punctuation characters; see the module docstring."""
    return len(_TOKEN.findall(text))


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the "text" parts of a parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
        # Newline, not "": parts must not glue two words into one token.
        return "\n".join(texts)
    return ""


def _prompt_tokens(messages: Sequence[Any]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += count_tokens(_content_text(content)) + MESSAGE_OVERHEAD_TOKENS
    return total


def _document(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _INSTRUCTION.sub("", _content_text(message.get("content")), count=1)
    return ""


# "Convert this document to markdown:", "Please convert the following HTML into Markdown",
# … only when it ends the line or has a colon, so a document that merely starts with
# "Convert" keeps its first sentence.
_INSTRUCTION = re.compile(
    r"\A\s*(?:please[,\s]+)?convert\b[^\n]{0,80}?\b(?:to|into)\s+markdown\b"
    r"(?:[^\S\n]*:[^\S\n]*\n?|[^\S\n]*[.!]?[^\S\n]*(?:\n|\Z))",
    re.IGNORECASE,
)


def _truncate(text: str, max_tokens: int) -> tuple[str, int, bool]:
    """(text cut after its first `max_tokens` tokens, tokens kept, whether it was cut)."""
    kept = 0
    end = 0
    for match in _TOKEN.finditer(text):
        if kept == max_tokens:
            return text[:end], kept, True
        kept += 1
        end = match.end()
    return text, kept, False


class LocalMarkdownProvider:
    """The `Provider` for `local/markdown`. Stateless and thread-safe."""

    model_id = MODEL_ID
    capabilities: frozenset[str] = frozenset()  # no tools, response_format or logprobs

    def __init__(self, chunk_tokens: int = 8) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be at least 1")
        self.chunk_tokens = chunk_tokens  # tokens per streamed delta

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        # Exact, not just an upper bound: the count does not depend on the output.
        return _prompt_tokens(request.messages)

    def complete(self, request: ChatRequest) -> Completion:
        markdown = convert_to_markdown(_document(request.messages))
        text, tokens, cut = _truncate(markdown, max(0, request.max_tokens))
        return Completion(
            text=text,
            finish_reason="length" if cut else "stop",
            prompt_tokens=_prompt_tokens(request.messages),
            completion_tokens=tokens,
        )

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """The text of `complete()` in deltas of `chunk_tokens` tokens, then a StreamEnd."""
        result = self.complete(request)
        text = result.text
        start = 0
        count = 0
        for match in _TOKEN.finditer(text):
            count += 1
            if count % self.chunk_tokens == 0:
                yield Delta(text[start : match.end()], count)
                start = match.end()
        if start < len(text):
            yield Delta(text[start:], count)
        yield StreamEnd(result.finish_reason, result.prompt_tokens, result.completion_tokens)


# --- detection ---------------------------------------------------------------------


def convert_to_markdown(document: str) -> str:
    """Markdown for a document of any supported kind (see the module docstring)."""
    text = document.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    stripped = text.strip()
    if not stripped:
        return ""
    if stripped[0] in "[{":
        try:
            data = json.loads(stripped)
            pretty = json.dumps(data, indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to re-indent
            pass
        else:
            if isinstance(data, dict | list):
                return f"```json\n{pretty}\n```"
    if _HTML_START.match(stripped):
        return html_to_markdown(stripped)
    if _looks_like_markdown(stripped):
        return _normalise_markdown(stripped, neutralise_html=True)
    if len(_HTML_TAG.findall(stripped)) >= 2:
        return html_to_markdown(stripped)
    rows = _delimited_rows(stripped)
    if rows is not None:
        return _pipe_table([[_escape(cell.strip()) for cell in row] for row in rows])
    return _plain_to_markdown(stripped)


_HTML_START = re.compile(
    r"\A(?:<!--.*?-->\s*)*<(?:!doctype\b|\?xml\b|[a-z][a-z0-9-]*(?:\s[^<>]*)?/?>)",
    re.IGNORECASE | re.DOTALL,
)
_HTML_TAG = re.compile(
    r"</?(?:html|head|body|div|span|p|a|h[1-6]|ul|ol|li|table|tr|td|th|br|hr|img|strong|em"
    r"|b|i|code|pre|blockquote|section|article|script|style|main|nav|header|footer)\b[^<>]*>",
    re.IGNORECASE,
)
# Unambiguous Markdown: headings, fences, quotes, table rules, links, emphasis, code.
_MARKDOWN_SIGNS = re.compile(
    r"^ {0,3}(?:#{1,6}[ \t]+\S|```|~~~|>[ \t]?\S)"
    r"|^ {0,3}\|?[ \t]*:?-{3,}:?[ \t]*\|[ \t]*:?-{3,}"
    r"|!?\[[^\[\]\n]+\]\([^)\s]+\)"
    r"|\*\*[^*\s][^*\n]*\*\*|__[^_\s][^_\n]*__"
    r"|(?<![\w*])\*[^*\s][^*\n]*(?<![\s*])\*(?![\w*])"
    r"|`[^`\n]+`",
    re.MULTILINE,
)
# Lists alone are ambiguous (plain text has bullets too); two or more list lines count.
_LIST_LINE = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+\S", re.MULTILINE)


def _looks_like_markdown(text: str) -> bool:
    if _MARKDOWN_SIGNS.search(text):
        return True
    return len(_LIST_LINE.findall(text)) >= 2 and not _BULLET_SYMBOLS.search(text)


_BULLET_SYMBOLS = re.compile(r"^[ \t]*[•◦▪‣●][ \t]", re.MULTILINE)


def _delimited_rows(text: str) -> list[list[str]] | None:
    """The rows of a CSV/TSV table, or None if the text is not one."""
    first_line = text.split("\n", 1)[0]
    for delimiter in ("\t", ",", ";"):
        if delimiter not in first_line:
            continue
        try:
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
        except csv.Error:
            continue
        width = len(rows[0])
        if len(rows) < 2 or width < 2 or any(len(row) != width for row in rows):
            continue  # a blank line gives [] and fails here too: that is paragraphs
        if delimiter != "\t" and _is_prose(rows):
            continue
        return rows
    return None


def _is_prose(rows: list[list[str]]) -> bool:
    # "I came home, tired." on every line has a consistent comma count but is not data.
    sentences = sum(bool(re.search(r"[^\W\d_][.!?]$", row[-1].strip())) for row in rows)
    return sentences * 2 >= len(rows)


# --- Markdown building blocks ------------------------------------------------------

# Characters that would start Markdown (or raw HTML) inside text. "_" only at a word
# edge: snake_case stays readable and CommonMark ignores intraword underscores anyway.
_ESCAPE = re.compile(r"[\\`*\[\]<]|(?<!\w)_|_(?!\w)|&(?=#?\w+;)")
# What would turn the start of a text line into a heading, quote, list, rule or fence.
_LINE_START = re.compile(r"^(#{1,6}(?=\s|$)|>|[-+](?=\s|$)|=+\s*$|-+\s*$|~{3,})|^(\d{1,9})([.)])")
_SPACES = re.compile(r"[ \t\n\r\f\v\xa0]+")


def _escape(text: str) -> str:
    return _ESCAPE.sub(lambda m: "\\" + m.group(0), text)


def _escape_line_start(line: str) -> str:
    match = _LINE_START.match(line)
    if match is None:
        return line
    if match.group(2) is not None:  # "1. " -> "1\. "
        return match.group(2) + "\\" + line[match.end(2) :]
    return "\\" + line


def _pipe_table(rows: list[list[str]]) -> str:
    """A GitHub pipe table; the first row is the header. Cells are already escaped."""
    width = max(len(row) for row in rows)

    def line(cells: list[str]) -> str:
        cells = [c.replace("\n", " ").replace("|", "\\|").strip() for c in cells]
        cells += [""] * (width - len(cells))
        return "| " + " | ".join(cells) + " |"

    separator = "| " + " | ".join(["---"] * width) + " |"
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _normalise_markdown(text: str, *, neutralise_html: bool = False) -> str:
    """Trailing spaces trimmed, at most one blank line in a row, code fences untouched.

    With `neutralise_html`, tags outside code are escaped (`\\<b>`): Markdown that came in
    as Markdown may embed raw HTML, and none must reach the output.
    """
    out: list[str] = []
    fence = ""
    for raw in text.split("\n"):
        line = raw.rstrip()
        if fence:
            out.append(line)
            body = line.strip()
            if body.startswith(fence) and body == fence[0] * len(body):
                fence = ""
            continue
        if not line:
            if out and out[-1]:
                out.append("")
            continue
        match = _FENCE_OPEN.match(line)
        if match:
            fence = match.group(1)
        elif neutralise_html:
            line = _MARKDOWN_INLINE.sub(_escape_tag, line)
        out.append(line)
    return "\n".join(out).strip("\n")


# A backslash escape, a code span, or a "<" that would open raw HTML (not an autolink).
_MARKDOWN_INLINE = re.compile(
    r"\\.|(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)"
    r"|<(?=[A-Za-z!?/])(?![A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*>)(?![^\s<>@]+@[^\s<>]+>)"
)


def _escape_tag(match: re.Match[str]) -> str:
    return "\\<" if match.group(0) == "<" else match.group(0)


def _fenced(code: str, info: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{code}\n{fence}"


# --- plain text --------------------------------------------------------------------

_BULLET = re.compile(r"^([ \t]*)(?:([-*+•◦▪‣●])|(\d{1,9})[.)])[ \t]+(\S.*)$")


def _plain_to_markdown(text: str) -> str:
    blocks: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    blocks = [block for block in blocks if block]

    out: list[str] = []
    for index, block in enumerate(blocks):
        if index == 0 and len(blocks) > 1 and len(block) == 1 and _is_title(block[0]):
            out.append("# " + _escape(_SPACES.sub(" ", block[0]).strip()))
            continue
        paragraph: list[str] = []
        items: list[str] = []
        for line in block:
            bullet = _BULLET.match(line)
            if bullet:
                if paragraph:
                    out.append("\n".join(paragraph))
                    paragraph = []
                indent = bullet.group(1).expandtabs(4)
                marker = f"{bullet.group(3)}." if bullet.group(3) else "-"
                items.append(f"{indent}{marker} {_escape(_SPACES.sub(' ', bullet.group(4)))}")
            elif items and line[:1] in " \t":  # a wrapped bullet continues
                items[-1] += " " + _escape(_SPACES.sub(" ", line).strip())
            else:
                if items:
                    out.append("\n".join(items))
                    items = []
                paragraph.append(_escape_line_start(_escape(_SPACES.sub(" ", line).strip())))
        if paragraph:
            out.append("\n".join(paragraph))
        if items:
            out.append("\n".join(items))
    return _normalise_markdown("\n\n".join(out))


def _is_title(line: str) -> bool:
    line = line.strip()
    return (
        len(line) <= 80
        and len(line.split()) <= 12
        and not line.endswith((".", ",", ";", ":"))
        and not _BULLET.match(line)
    )


# --- HTML --------------------------------------------------------------------------


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


class _TreeBuilder(HTMLParser):
    """A forgiving element tree: closes what browsers close implicitly (p, li, td, …)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self.stack = [self.root]
        # How many of each tag are open: lets _close skip its stack walk when none is.
        self.open: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._implicit_close(tag)
        node = _Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID and len(self.stack) < _MAX_DEPTH:
            self.stack.append(node)
            self.open[tag] = self.open.get(tag, 0) + 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._implicit_close(tag)
        self.stack[-1].children.append(_Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag == "br":  # browsers read a stray </br> as <br>
            self.stack[-1].children.append(_Node("br", {}))
            return
        self._close({tag}, frozenset())

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)

    def _close(self, targets: set[str], boundary: frozenset[str] | set[str]) -> None:
        """Pop up to the nearest open element in `targets`, unless a boundary comes first."""
        for target in targets:
            if self.open.get(target):
                break
        else:
            return
        for index in range(len(self.stack) - 1, 0, -1):
            tag = self.stack[index].tag
            if tag in targets:
                for node in self.stack[index:]:
                    self.open[node.tag] -= 1
                del self.stack[index:]
                return
            if tag in boundary:
                return

    def _implicit_close(self, tag: str) -> None:
        if tag not in _HEAD_CONTENT:  # a <head> left open ends where the content starts
            self._close({"head"}, frozenset())
        if tag in _BLOCKS:
            self._close({"p"}, {"td", "th", "table", "caption", "button", "template"})
        if tag == "li":
            self._close({"li"}, {"ul", "ol", "menu", "table"})
        elif tag in ("dt", "dd"):
            self._close({"dt", "dd"}, {"dl", "table"})
        elif tag == "tr":
            self._close({"tr"}, {"table"})
        elif tag in ("td", "th"):
            self._close({"td", "th"}, {"tr", "table"})
        elif tag in ("thead", "tbody", "tfoot"):
            self._close({"thead", "tbody", "tfoot"}, {"table"})


def html_to_markdown(html: str) -> str:
    """Markdown for an HTML document or fragment."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return _normalise_markdown("\n\n".join(_Renderer().blocks(builder.root)))


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
                buffer.append(_escape(_SPACES.sub(" ", child)))
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
        lines = [_escape_line_start(line) for line in lines if line]
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
            alt = _escape(_SPACES.sub(" ", node.attrs.get("alt", "")).strip())
            return f"![{alt}]({src})"
        if tag in ("code", "kbd", "samp", "tt", "var"):
            code = _SPACES.sub(" ", _raw_text(node))
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
                label = _escape(_SPACES.sub(" ", title).strip())
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
                parts.append(_escape(_SPACES.sub(" ", child)))
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
                    items.append([_escape(_SPACES.sub(" ", child).strip())])
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
        out.append(_fenced(code, language))

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
        out.append(_pipe_table(rows))


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
