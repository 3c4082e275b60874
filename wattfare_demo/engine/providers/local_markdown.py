"""`local/markdown`'s Markdown side: building blocks, and `tidy_markdown`, the offline
model of a converter's job on extracted text.

`tidy_markdown` does deterministically, outside code fences, what a real model is asked
to do with text a parser extracted:

- lines broken inside a paragraph (or a list item) are joined, and a word hyphenated at
  a line end ("inter-" / "national") is put back together;
- bullets of any kind (•, ◦, *, +, …) become "-";
- page furniture ("Page 3", "Page 3 of 9", "- 3 -") standing alone is dropped;
- headings nest: a heading never goes more than one level below the one before it;
- a paragraph never becomes a heading because of what follows it: an `=====` or
  `-----` line under more than one short title-like line is a separator (a thematic
  break), not a setext heading; lines of `*`, `-`, `_` or `=` alone are separators;
- no raw HTML survives outside code (`<b>` becomes `\\<b>`); at most one blank line
  between blocks; trailing spaces go (a hard break is kept as a backslash).

Everything else (tables, quotes, code, links, emphasis) passes through as it came.
"""

from __future__ import annotations

import re

__all__ = [
    "SPACES",
    "escape",
    "escape_line_start",
    "fenced",
    "normalise_markdown",
    "pipe_table",
    "tidy_markdown",
]

# Characters that would start Markdown (or raw HTML) inside text. "_" only at a word
# edge: snake_case stays readable and CommonMark ignores intraword underscores anyway.
_ESCAPE = re.compile(r"[\\`*\[\]<]|(?<!\w)_|_(?!\w)|&(?=#?\w+;)")
# What would turn the start of a text line into a heading, quote, list, rule or fence.
_LINE_START = re.compile(r"^(#{1,6}(?=\s|$)|>|[-+](?=\s|$)|=+\s*$|-+\s*$|~{3,})|^(\d{1,9})([.)])")
SPACES = re.compile(r"[ \t\n\r\f\v\xa0]+")


def escape(text: str) -> str:
    return _ESCAPE.sub(lambda m: "\\" + m.group(0), text)


def escape_line_start(line: str) -> str:
    match = _LINE_START.match(line)
    if match is None:
        return line
    if match.group(2) is not None:  # "1. " -> "1\. "
        return match.group(2) + "\\" + line[match.end(2) :]
    return "\\" + line


def pipe_table(rows: list[list[str]]) -> str:
    """A GitHub pipe table; the first row is the header. Cells are already escaped."""
    width = max(len(row) for row in rows)

    def line(cells: list[str]) -> str:
        cells = [c.replace("\n", " ").replace("|", "\\|").strip() for c in cells]
        cells += [""] * (width - len(cells))
        return "| " + " | ".join(cells) + " |"

    separator = "| " + " | ".join(["---"] * width) + " |"
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def normalise_markdown(text: str, *, neutralise_html: bool = False) -> str:
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
            if _closes(line, fence):
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
            line = neutralise_tags(line)
        out.append(line)
    return "\n".join(out).strip("\n")


def _closes(line: str, fence: str) -> bool:
    body = line.strip()
    return body.startswith(fence) and body == fence[0] * len(body)


# A backslash escape, a code span, or a "<" that would open raw HTML (not an autolink).
_MARKDOWN_INLINE = re.compile(
    r"\\.|(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)"
    r"|<(?=[A-Za-z!?/])(?![A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*>)(?![^\s<>@]+@[^\s<>]+>)"
)


def neutralise_tags(line: str) -> str:
    return _MARKDOWN_INLINE.sub(lambda m: "\\<" if m.group(0) == "<" else m.group(0), line)


def fenced(code: str, info: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{code}\n{fence}"


# --- tidy ------------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_SEPARATOR = re.compile(r"^ {0,3}(?:([-*_=])[ \t]*){3,}$")
_ITEM = re.compile(r"^([ \t]*)(?:([-*+•◦▪‣●○■□➢➤►])|(\d{1,9})([.)]))[ \t]+(\S.*)$")
_TABLE_LINE = re.compile(r"^ {0,3}\|")
_QUOTE = re.compile(r"^ {0,3}>")
_PAGE_FURNITURE = re.compile(
    r"^(?:page[ \t]+\d{1,4}(?:[ \t]*(?:of|/)[ \t]*\d{1,4})?|\d{1,4}[ \t]*(?:of|/)[ \t]*\d{1,4}"
    r"|[-\u2013\u2014][ \t]*\d{1,4}[ \t]*[-\u2013\u2014])$",
    re.IGNORECASE,
)
_HYPHENATED = re.compile(r"[^\W\d_]-$")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TITLE_MAX = 80


class _Tidy:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.paragraph: list[str] = []
        self.last_level = 0  # the level of the last heading written
        self.kind = "blank"  # what the last line written was: text, list, table, quote…
        # Continuation lines of the last list item, joined to it once it ends: joining
        # each as it came copied the item every time (quadratic in its lines).
        self.more: list[str] = []

    # The document as a list of lines; `gap()` ensures the blank line before a block.
    def gap(self) -> None:
        if self.out and self.out[-1] != "":
            self.out.append("")

    def end_item(self) -> None:
        if self.more:
            self.out[-1] = _join_lines([self.out[-1], *self.more])
            self.more = []

    def flush(self) -> None:
        self.end_item()
        lines, self.paragraph = self.paragraph, []
        if not lines:
            return
        text = _join_lines(lines)
        if _PAGE_FURNITURE.match(text.strip()):
            return
        self.gap()
        self.out.append(text)
        self.out.append("")

    def heading(self, level: int, text: str) -> None:
        self.flush()
        if self.last_level and level > self.last_level + 1:
            level = self.last_level + 1
        self.last_level = level
        self.gap()
        self.out.extend(["#" * level + " " + text, ""])

    def separator(self) -> None:
        self.flush()
        self.gap()
        self.out.extend(["---", ""])

    def line_block(self, line: str, kind: str) -> None:
        """A table row, quote line or list item: kept on its own line, in a group."""
        self.flush()
        if self.out and self.out[-1] != "" and self.kind != kind:
            self.out.append("")
        self.out.append(line)
        self.kind = kind

    def text(self, line: str) -> None:
        self.kind = "text"
        self.paragraph.append(_INNER_SPACES.sub(" ", line))


def tidy_markdown(text: str) -> str:
    """Extracted Markdown, tidied as a careful editor would (see the module docstring)."""
    tidy = _Tidy()
    fence = ""
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.rstrip()
        if fence:
            tidy.out.append(raw.rstrip("\n"))
            if _closes(line, fence):
                fence = ""
                tidy.out.append("")
            continue
        opening = _FENCE_OPEN.match(line)
        if opening:
            tidy.flush()
            tidy.gap()
            fence = opening.group(1)
            tidy.out.append(line)
            tidy.kind = "fence"
            continue
        if not line.strip():
            tidy.flush()
            tidy.kind = "blank"
            continue
        atx = _ATX.match(line)
        if atx:
            title = (atx.group(2) or "").strip()
            if title:
                tidy.heading(len(atx.group(1)), neutralise_tags(title))
            continue
        if tidy.paragraph and _SETEXT.match(line):
            if len(tidy.paragraph) == 1 and _title_like(tidy.paragraph[0]):
                title = tidy.paragraph.pop()
                tidy.heading(1 if line.strip()[0] == "=" else 2, neutralise_tags(title.strip()))
            else:
                tidy.separator()
            continue
        if _SEPARATOR.match(line):
            tidy.separator()
            continue
        if _TABLE_LINE.match(line):
            tidy.line_block(neutralise_tags(line.strip()), "table")
            continue
        if _QUOTE.match(line):
            tidy.line_block(neutralise_tags(line.strip()), "quote")
            continue
        if not tidy.paragraph and _PAGE_FURNITURE.match(line.strip()):
            continue  # "- 4 -" alone is a page number, not a list item
        item = _ITEM.match(line)
        if item:
            indent = " " * min(len(item.group(1).expandtabs(4)), 12)
            marker = f"{item.group(3)}{item.group(4)}" if item.group(3) else "-"
            body = _INNER_SPACES.sub(" ", neutralise_tags(item.group(5).strip()))
            tidy.line_block(f"{indent}{marker} {body}", "list")
            continue
        if tidy.kind == "list" and raw[:1] in (" ", "\t") and tidy.out:
            tidy.more.append(_INNER_SPACES.sub(" ", neutralise_tags(line.strip())))
            continue
        tidy.text(neutralise_tags(line.strip() if not line.endswith("\\") else line.lstrip()))
    tidy.flush()
    return normalise_markdown("\n".join(tidy.out))


def _title_like(line: str) -> bool:
    """A line that could be a title: short, with letters, not a sentence or a price list."""
    text = line.strip()
    letters = sum(ch.isalpha() for ch in text)
    digits = sum(ch.isdigit() for ch in text)
    return (
        0 < len(text) <= _TITLE_MAX
        and letters >= 2
        and digits * 4 <= letters
        and not text.endswith((".", ",", ";", ":", "!", "?"))
        and "*" not in text
    )


def _join_lines(lines: list[str]) -> str:
    """Soft-wrapped lines as one line; a hyphen at a line end before a lowercase word goes.

    Built as a list of parts, and each test looks at the last part's end only: growing
    one string (or searching it whole) made a paragraph of 10,000 lines quadratic, a
    minute for a plain-text file."""
    parts = [lines[0]]
    for line in lines[1:]:
        last = parts[-1]
        if last.endswith("\\"):  # a hard line break stays a break
            parts.append("\n" + line)
        elif _HYPHENATED.search(last, max(len(last) - 2, 0)) and line[:1].islower():
            parts[-1] = last[:-1]
            parts.append(line)
        else:
            parts.append(" " + line)
    return "".join(parts)
