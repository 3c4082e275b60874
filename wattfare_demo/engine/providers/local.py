"""`local/markdown`: the offline default model. It turns a document into tidy Markdown.

No network, no weights, no randomness: the same request always gives the same text and
the same usage, so grants, holds and dollar caps can be exercised end to end offline.

What it reads (the rule any caller can use; nothing here knows the demo's prompt):

- The document is the text of the LAST user message (a string, or OpenAI content parts
  whose "text" parts are joined with newlines). System and earlier messages are
  instructions: counted for billing, otherwise ignored.
- If that message holds a `<document>` … `</document>` block, the document is what is
  inside it (from the first opening tag to the last closing one) and the words around
  it are instructions. This is how the demo converter sends each part.
- Without a block, one leading instruction that names Markdown and ends with a colon
  or the line, as in the one-time grants docs ("Convert this document to markdown:
  …"), is dropped; everything after it is the document.

What it does with the document, in this order:

1. JSON (an object or array that parses): a fenced ```json block, indent 2.
2. HTML (starts with a tag, or holds a couple of well-known tags and no Markdown):
   Markdown, by local_html.py.
3. CSV/TSV (the same tab, comma or semicolon count on every line, >= 2 columns, >= 2
   rows, and no Markdown in it): a pipe table with the first row as header.
4. Anything else is Markdown, or plain text (which is Markdown too): tidied by
   `local_markdown.tidy_markdown`, the offline model of a converter's job on extracted
   text: broken lines and hyphenated words joined, bullets normalised, page numbers
   dropped, headings nested, and never a heading made of a paragraph because of a
   stray `*` or `=====` line.

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
from collections.abc import Sequence
from typing import Any

from .base import ChatRequest, Completion, Delta, EventStream, StreamEnd
from .local_html import html_to_markdown
from .local_markdown import escape, pipe_table, tidy_markdown

__all__ = ["MODEL_ID", "LocalMarkdownProvider", "convert_to_markdown", "count_tokens"]

MODEL_ID = "local/markdown"
MESSAGE_OVERHEAD_TOKENS = 4  # per message, for the role, like chat models bill it

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Words (runs of \\w) plus punctuation characters; see the module docstring."""
    # subn counts the matches without keeping them: findall built a list of every token
    # (~5 MB for a 0.44 MB document) and is slower; sum(1 for _ in finditer) is slower
    # still (bench/local_model.py). The new string holds only the whitespace.
    return _TOKEN.subn("", text)[1]


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
    """The document in a request: see "What it reads" in the module docstring."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _content_text(message.get("content"))
            start = text.find(_OPEN)
            end = text.rfind(_CLOSE)
            if start != -1 and end > start:
                return text[start + len(_OPEN) : end].strip("\n")
            return _INSTRUCTION.sub("", text, count=1)
    return ""


_OPEN, _CLOSE = "<document>", "</document>"
# One leading instruction that names Markdown and ends with a colon or the line:
# "Convert this document to markdown:", "Tidy this into Markdown." A document that
# merely mentions Markdown later in its first line keeps it.
_INSTRUCTION = re.compile(
    r"\A\s*[^\n<>]{0,100}?\b(?:to|into|as|in)\s+markdown\b"
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

    def stream(self, request: ChatRequest) -> EventStream:
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
    markdown = _looks_like_markdown(stripped)
    if not markdown and len(_HTML_TAG.findall(stripped)) >= 2:
        return html_to_markdown(stripped)
    rows = None if markdown else _delimited_rows(stripped)
    if rows is not None:
        return pipe_table([[escape(cell.strip()) for cell in row] for row in rows])
    return tidy_markdown(stripped)


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
