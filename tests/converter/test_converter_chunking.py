"""chunking.split: one model call per chunk, split where the document's structure is."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattfare_demo.converter.chunking import split


def test_a_small_document_is_one_chunk() -> None:
    assert split(["# Title\n\nOne paragraph."], 1000) == ["# Title\n\nOne paragraph."]


def test_sections_pages_are_chunk_boundaries_once_a_chunk_is_well_filled() -> None:
    page = "Words " * 120  # 720 characters
    chunks = split([page.strip(), page.strip(), page.strip()], 1000)
    assert chunks == [page.strip()] * 3  # a page each, never a page cut in two


def test_small_sections_share_a_chunk() -> None:
    assert split(["Page one.", "Page two."], 1000) == ["Page one.\n\nPage two."]


def test_a_heading_starts_a_new_chunk_when_the_current_one_is_full_enough() -> None:
    section = "# A\n\n" + "x " * 300 + "\n\n# B\n\n" + "y " * 300
    first, second = split([section], 1000)
    assert first.startswith("# A") and "# B" not in first
    assert second.startswith("# B")


def test_a_long_table_is_split_between_rows_with_its_header_repeated() -> None:
    header = "| id | name |\n| --- | --- |"
    rows = [f"| {i} | City number {i} |" for i in range(200)]
    chunks = split([header + "\n" + "\n".join(rows)], 1000)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.startswith(header + "\n|")
        assert len(chunk) <= 1000
    body = [line for chunk in chunks for line in chunk.split("\n")[2:]]
    assert body == rows  # every row once, in order


def test_a_long_code_block_is_split_between_lines_with_its_fence_reopened() -> None:
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(300)) + "\n```"
    chunks = split([code], 500)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.startswith("```python\n") and chunk.endswith("\n```")
        assert len(chunk) <= 500


def test_a_long_paragraph_is_split_between_sentences() -> None:
    paragraph = " ".join(f"Sentence number {i} ends here." for i in range(100))
    chunks = split([paragraph], 400)
    assert all(len(c) <= 400 for c in chunks)
    assert all(c.endswith("here.") for c in chunks)
    assert " ".join(chunks) == paragraph


def test_a_word_longer_than_a_chunk_is_cut() -> None:
    chunks = split(["a" * 1000], 300)
    assert "".join(chunks) == "a" * 1000 and all(len(c) <= 300 for c in chunks)


def test_a_budget_too_small_for_a_table_row_is_refused() -> None:
    with pytest.raises(ValueError):
        split(["x"], 10)


_block = st.one_of(
    st.text(alphabet="abc .\n", min_size=1, max_size=400).map(lambda t: t.strip() or "a"),
    st.integers(1, 40).map(
        lambda n: "| h | k |\n| --- | --- |\n" + "\n".join(f"| {i} | v{i} |" for i in range(n))
    ),
    st.integers(1, 5).map(lambda n: "#" * n + " Heading"),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(_block, min_size=1, max_size=6), min_size=1, max_size=4),
    st.integers(200, 2000),
)
def test_chunks_fit_the_budget_lose_no_word_and_are_deterministic(
    sections: list[list[str]], budget: int
) -> None:
    documents = ["\n\n".join(blocks) for blocks in sections]
    chunks = split(documents, budget)
    assert chunks == split(documents, budget)
    assert all(0 < len(chunk) <= budget for chunk in chunks)
    words = re.findall(r"[a-z0-9]+", " ".join(documents))
    table_headers = len(re.findall(r"\| h \| k \|", " ".join(documents)))
    got = re.findall(r"[a-z0-9]+", " ".join(chunks))
    # Repeated table headers add "h k"; everything else arrives once, in order.
    assert len(got) - len(words) == 2 * (
        len(re.findall(r"\| h \| k \|", " ".join(chunks))) - table_headers
    )
