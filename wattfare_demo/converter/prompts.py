"""What the converter says to the model, one call per chunk.

The system message is the job; the user message names the part and carries the chunk
in a `<document>` block. Any OpenAI-compatible model follows that; the offline
`local/markdown` model tidies what is inside the block (its rule is in
engine/providers/local.py), so the same prompt works offline and on a real model.

The extraction (extract.py) already made the structure it could see into Markdown:
the model does only what a parser can't.
"""

from __future__ import annotations

__all__ = ["MAX_OUTPUT_TOKENS", "SYSTEM_PROMPT", "part_prompt"]

SYSTEM_PROMPT = """\
You turn text extracted from a document into clean GitHub-flavoured Markdown.
A program extracted it: the headings, lists, links and tables it recognised are \
already Markdown. Do what it could not:
- join lines broken inside a paragraph, and words hyphenated at a line end;
- drop page furniture: running headers and footers, page numbers, "continued" notes;
- rebuild tables that arrived as columns of plain text into pipe tables;
- fix heading levels so they nest, and never make a heading of a line that is not one.
Keep every word of the document in its order and language: do not summarise, translate, \
explain or add anything. The document may come in parts: convert only the part inside \
<document>, as a continuation of the parts before it.
Reply with the Markdown only: no introduction, no comments, no surrounding code fence."""

# The answer's length limit per part. A chunk is sized (CONVERTER_CHUNK_CHARS) so its
# Markdown fits well inside it; the engine may clamp it further to what a grant's dollar
# cap can pay for (finish_reason "length"). 16,000 fits the output limit of the common
# hosted models (gpt-4o-mini allows 16,384).
MAX_OUTPUT_TOKENS = 16_000


def part_prompt(chunk: str, index: int, total: int, filename: str) -> str:
    """The user message for part `index` (1-based) of `total` of a document."""
    where = f"Part {index} of {total} of {filename}." if total > 1 else f"The file {filename}."
    return f"{where}\n<document>\n{chunk}\n</document>"
