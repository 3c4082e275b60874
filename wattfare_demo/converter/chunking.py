"""Split a document's Markdown into chunks, one model call (one grant request) each.

A chunk holds at most `budget` characters and breaks on structure, in this order of
preference: a section (PDF page, slide, sheet), a heading, a block (paragraph, list,
table, code). A block larger than a chunk is split too: a table between rows with its
header repeated at the top of every part, a code block between lines with its fence
reopened, a paragraph between sentences (or, failing that, words).

`split()` is deterministic, so `POST /api/convert/plan` and `/api/convert` agree on the
number of requests a file needs without keeping it between the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

__all__ = ["split"]

# Once a chunk is this full, a heading or a new section starts the next one, so parts
# begin where the document does rather than mid-topic.
_SOFT_FILL = 0.6
_HEADING = re.compile(r"^ {0,3}#{1,6}\s")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+")  # CJK full stops too


def split(sections: Sequence[str], budget: int) -> list[str]:
    """The chunks of a document given as sections of Markdown; never an empty chunk."""
    if budget < 200:
        raise ValueError("a chunk budget under 200 characters can't hold a table row")
    chunks: list[str] = []
    current: list[str] = []
    size = 0

    def close() -> None:
        nonlocal current, size
        if current:
            chunks.append("\n\n".join(current))
        current, size = [], 0

    for section in sections:
        first = True
        for block in _blocks(section):
            for piece in _fit(block, budget):
                extra = len(piece) + (2 if current else 0)
                structural = first or _HEADING.match(piece) is not None
                if current and (
                    size + extra > budget or (structural and size >= budget * _SOFT_FILL)
                ):
                    close()
                    extra = len(piece)
                current.append(piece)
                size += extra
                first = False
    close()
    return chunks


def _blocks(section: str) -> Iterator[str]:
    """Blank-line-separated blocks; a fenced code block is one block, blank lines and all."""
    lines = section.split("\n")
    block: list[str] = []
    fence = ""
    for line in lines:
        if fence:
            block.append(line)
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = ""
            continue
        match = _FENCE.match(line)
        if match:
            fence = match.group(1)
            block.append(line)
            continue
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _fit(block: str, budget: int) -> Iterator[str]:
    if len(block) <= budget:
        yield block
        return
    lines = block.split("\n")
    if len(lines) >= 3 and lines[0].lstrip().startswith("|") and _TABLE_RULE.match(lines[1]):
        yield from _pack_lines(lines[2:], budget, head=lines[:2])
    elif _FENCE.match(lines[0]) and len(lines) >= 2:
        opening, closing = lines[0], _FENCE.match(lines[0]).group(1)  # type: ignore[union-attr]
        body = lines[1:-1] if lines[-1].strip().startswith(closing) else lines[1:]
        yield from _pack_lines(body, budget, head=[opening], tail=[closing])
    else:
        yield from _split_prose(block, budget)


def _pack_lines(
    lines: list[str], budget: int, head: list[str], tail: Sequence[str] = ()
) -> Iterator[str]:
    """Lines packed into parts of at most `budget` characters, each wrapped in head/tail."""
    frame = sum(len(line) + 1 for line in (*head, *tail))
    room = budget - frame
    if room < 50:  # a header row nearly as long as a chunk: send the rows without it
        head, tail, room = [], [], budget
    part: list[str] = []
    size = 0
    for line in lines:
        for piece in _hard_wrap(line, room):
            if part and size + len(piece) + 1 > room:
                yield "\n".join([*head, *part, *tail])
                part, size = [], 0
            part.append(piece)
            size += len(piece) + 1
    if part:
        yield "\n".join([*head, *part, *tail])


def _split_prose(block: str, budget: int) -> Iterator[str]:
    pieces = [p for p in _SENTENCE_END.split(block) if p]
    part = ""
    for sentence in pieces:
        for piece in _hard_wrap(sentence, budget):
            if part and len(part) + 1 + len(piece) > budget:
                yield part
                part = ""
            part = f"{part} {piece}" if part else piece
    if part:
        yield part


def _hard_wrap(text: str, width: int) -> Iterator[str]:
    """Text in pieces of at most `width` characters, cut at spaces where there are any."""
    while len(text) > width:
        cut = text.rfind(" ", 0, width)
        if cut <= width // 2:
            cut = width
        yield text[:cut]
        text = text[cut:].lstrip(" ")
    if text:
        yield text
