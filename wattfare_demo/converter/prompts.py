"""What the converter says to the model.

The user message is the seed's prompt, word for word: "Convert this document to
markdown: …". The offline `local/markdown` model drops that first line and converts the
rest; a real model (WATTFARE_MODEL=openai/gpt-4o-mini, say) also gets the system message,
which keeps it from wrapping the answer in prose or a code fence.
"""

from __future__ import annotations

__all__ = ["MAX_OUTPUT_TOKENS", "SYSTEM_PROMPT", "conversion_prompt"]

SYSTEM_PROMPT = (
    "You convert documents to clean GitHub-flavoured Markdown. Keep the document's own "
    "words, headings, lists, links and tables; turn tabular data into Markdown tables. "
    "Reply with the Markdown only: no introduction, no comments, no surrounding code fence."
)

# The answer's length limit. The engine clamps it further to what a grant's dollar cap can
# pay for (and says so with finish_reason "length"); 16,000 fits the output limit of the
# common hosted models (gpt-4o-mini allows 16,384).
MAX_OUTPUT_TOKENS = 16_000


def conversion_prompt(text: str) -> str:
    """The user message for one document (its extracted text)."""
    return f"Convert this document to markdown:\n\n{text}"
