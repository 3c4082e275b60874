"""`local/markdown`: the offline provider really converts, and bills exactly."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wattfare_demo.engine.providers.base import (
    ChatRequest,
    Completion,
    Delta,
    Provider,
    StreamEnd,
)
from wattfare_demo.engine.providers.local import (
    MODEL_ID,
    LocalMarkdownProvider,
    convert_to_markdown,
    count_tokens,
)

PROVIDER: Provider = LocalMarkdownProvider()  # also checks the Protocol for type checkers


def ask(content: Any, max_tokens: int = 10_000, **extra: Any) -> ChatRequest:
    messages = [*extra.pop("history", []), {"role": "user", "content": content}]
    return ChatRequest(model=MODEL_ID, messages=messages, max_tokens=max_tokens, options=extra)


def convert(content: Any, max_tokens: int = 10_000) -> Completion:
    return PROVIDER.complete(ask(content, max_tokens))


# --- token counting ----------------------------------------------------------------


def test_count_tokens_examples() -> None:
    assert MODEL_ID == "local/markdown"
    assert count_tokens("") == 0
    assert count_tokens("  \n\t ") == 0
    assert count_tokens("Hello, world!") == 4  # Hello , world !
    assert count_tokens("don't") == 3  # don ' t
    assert count_tokens("snake_case 42") == 2  # "_" is a word character
    assert count_tokens("naïve café") == 2  # unicode letters are word characters
    assert count_tokens("...!!") == 5  # one token per punctuation character
    assert count_tokens("a—b 😀") == 4  # a — b 😀
    assert count_tokens("## Title\n\n- [x](y)") == 10


def test_prompt_tokens_are_every_message_plus_four_each() -> None:
    request = ask(
        "Convert this document to markdown: hi",
        history=[
            {"role": "system", "content": "Be brief."},  # 3 tokens
            {"role": "assistant", "content": None},  # 0 tokens
        ],
    )
    expected = 3 + 0 + count_tokens("Convert this document to markdown: hi") + 3 * 4
    assert PROVIDER.prompt_tokens_upper_bound(request) == expected == 22
    assert PROVIDER.complete(request).prompt_tokens == expected


# --- conversion --------------------------------------------------------------------

HTML_DOC = """<!doctype html>
<html><head><title>Ignored title</title><style>p { color: red }</style></head>
<body>
  <h1>Grant   report</h1>
  <p>Funding for <strong>solar</strong> &amp; <em>wind</em>, see
     <a href="https://example.org/grants?id=7">the call</a>.</p>
  <script>document.write("SECRET-SCRIPT")</script>
  <h2>Milestones</h2>
  <ul>
    <li>Design
      <ul><li>Survey</li><li>Permits</li></ul>
    </li>
    <li>Build</li>
  </ul>
  <ol><li>First</li><li>Second</li></ol>
  <table>
    <tr><th>Item</th><th>Cost</th></tr>
    <tr><td>Panels | racks</td><td>1,200</td></tr>
  </table>
  <img src="/chart.png" alt="Chart">
</body></html>"""


def test_html_becomes_markdown() -> None:
    result = convert(HTML_DOC)
    assert result.text == (
        "# Grant report\n"
        "\n"
        "Funding for **solar** & *wind*, see [the call](https://example.org/grants?id=7).\n"
        "\n"
        "## Milestones\n"
        "\n"
        "- Design\n"
        "  - Survey\n"
        "  - Permits\n"
        "- Build\n"
        "\n"
        "1. First\n"
        "2. Second\n"
        "\n"
        "| Item | Cost |\n"
        "| --- | --- |\n"
        "| Panels \\| racks | 1,200 |\n"
        "\n"
        "![Chart](/chart.png)"
    )
    assert "SECRET-SCRIPT" not in result.text
    assert "Ignored title" not in result.text
    assert result.finish_reason == "stop"
    assert result.completion_tokens == count_tokens(result.text)


def test_html_code_quotes_rules_and_breaks() -> None:
    html = (
        "<p>Line one<br>line two</p><hr>"
        "<blockquote><p>Quoted</p><p>twice</p></blockquote>"
        '<pre><code class="language-python">if a < b:\n    print("```")\n</code></pre>'
        "<p>Run <code>make test</code> now</p>"
        "<ol start='3'><li>three</li><li>four</li></ol>"
    )
    assert convert_to_markdown(html) == (
        "Line one\\\nline two\n"
        "\n"
        "---\n"
        "\n"
        "> Quoted\n"
        ">\n"
        "> twice\n"
        "\n"
        '````python\nif a < b:\n    print("```")\n````\n'
        "\n"
        "Run `make test` now\n"
        "\n"
        "3. three\n"
        "4. four"
    )


def test_html_never_passes_raw_html_through() -> None:
    html = (
        "<div><p>&lt;script&gt;alert(1)&lt;/script&gt; and a &lt;b&gt;tag&lt;/b&gt;</p>"
        "<template><p>TEMPLATE-TEXT</p></template><!-- <i>COMMENT</i> -->"
        "<x-card><span>custom</span> element</x-card>"
        "<noscript><p>NOSCRIPT-TEXT</p></noscript>"
        '<p><a href="javascript:alert(2)">click</a> # not a heading</p></div>'
    )
    text = convert_to_markdown(html)
    assert text == (
        "\\<script>alert(1)\\</script> and a \\<b>tag\\</b>\n\n"
        "custom element\n\n"
        "click # not a heading"
    )
    assert re.search(r"(?<!\\)<[a-zA-Z/!]", text) is None
    assert "javascript:" not in text
    for hidden in ("TEMPLATE-TEXT", "COMMENT", "NOSCRIPT-TEXT"):
        assert hidden not in text


def test_html_as_browsers_read_it() -> None:
    # What libxml2 (lxml) reads differently from html.parser, made to match browsers:
    # a stray </br> is a line break, nested links are two links, NUL is U+FFFD.
    html = "<p>a<br/>b</br>c</BR >d</p><p><a href=/1>one<a href=/2>two</a></a></p><p>x\x00y</p>"
    assert convert_to_markdown(html) == "a\\\nb\\\nc\\\nd\n\n[one](/1)[two](/2)\n\nx\ufffdy"


def test_html_with_an_encoding_declaration_is_read_as_the_text_it_is() -> None:
    # The document arrives decoded: a declared encoding neither empties nor re-decodes it.
    xml = '<?xml version="1.0" encoding="utf-8"?><html><body><p>é x</p></body></html>'
    assert convert_to_markdown(xml) == "é x"
    latin = '<html><head><meta charset="iso-8859-1"></head><body><p>日本 é</p></body></html>'
    assert convert_to_markdown(latin) == "日本 é"


def test_html_deeper_than_libxml2_reads_keeps_its_text() -> None:
    # libxml2 stops at 2048 open elements and drops the rest; the reader then keeps the
    # document's text rather than an empty answer, in linear time.
    depth = 10_000
    html = "<div>" * depth + "deep <b>text</b> &amp; more" + "</div>" * depth + "<p>after</p>"
    assert convert_to_markdown(html) == "deep text & more after"
    # Deep but within libxml2's limit: the structure above _MAX_DEPTH is kept, the rest
    # is flattened, and nothing recurses without bound.
    nested = "<ul><li>" * 1000 + "leaf" + "</li></ul>" * 1000
    text = convert_to_markdown(nested)
    assert text.endswith("leaf") and text.startswith("- - ")


def test_unsafe_and_awkward_urls() -> None:
    html = (
        '<p><a href="java\nscript:alert(1)">js</a> <a href="data:text/html,x">data</a> '
        '<img src="data:image/png;base64,AAAA" alt="dot"> <a href="/a b(c)">odd</a> '
        '<a href="/docs" title="Docs"><i class="icon"></i></a></p>'
    )
    assert convert_to_markdown(html) == (
        "js data ![dot](data:image/png;base64,AAAA) [odd](/a%20b%28c%29) [Docs](/docs)"
    )


def test_text_that_looks_like_markdown_is_escaped_in_html() -> None:
    html = "<p>1. not a list</p><p># not a heading</p><p>*not emphasis* [nor link]</p>"
    assert convert_to_markdown(html) == (
        "1\\. not a list\n\n\\# not a heading\n\n\\*not emphasis\\* \\[nor link\\]"
    )


def test_csv_becomes_a_table() -> None:
    csv_doc = 'name,amount,currency\nSolar pilot,1200,EUR\n"Wind, offshore",5000,USD\n'
    assert convert(csv_doc).text == (
        "| name | amount | currency |\n"
        "| --- | --- | --- |\n"
        "| Solar pilot | 1200 | EUR |\n"
        "| Wind, offshore | 5000 | USD |"
    )


def test_tsv_becomes_a_table_with_pipes_escaped() -> None:
    assert convert("a\tb\n1|2\t3\n").text == "| a | b |\n| --- | --- |\n| 1\\|2 | 3 |"


def test_prose_with_commas_is_not_a_table() -> None:
    text = convert("I went home, tired.\nThen I slept, well.").text
    assert text == "I went home, tired. Then I slept, well."  # one paragraph, joined


def test_json_is_pretty_printed_in_a_fence() -> None:
    text = convert('{"grant": {"id": 7, "tags": ["solar", "ü"]}, "ok": true}').text
    assert text == (
        "```json\n"
        "{\n"
        '  "grant": {\n'
        '    "id": 7,\n'
        '    "tags": [\n'
        '      "solar",\n'
        '      "ü"\n'
        "    ]\n"
        "  },\n"
        '  "ok": true\n'
        "}\n"
        "```"
    )


def test_plain_text_gets_paragraphs_and_bullets_and_never_a_made_up_title() -> None:
    doc = (
        "Quarterly update\n\n"
        "We installed the panels\non the north roof.\n\n"
        "• inverter ordered\n* grid approval   pending\n\n"
        "Next review in May."
    )
    assert convert(doc).text == (
        "Quarterly update\n"  # a short first paragraph stays a paragraph ("# Apple" no more)
        "\n"
        "We installed the panels on the north roof.\n"
        "\n"
        "- inverter ordered\n"
        "- grid approval pending\n"
        "\n"
        "Next review in May."
    )


def test_plain_text_sentence_first_line_is_not_a_title() -> None:
    assert convert("Dear team,\n\nThanks.").text == "Dear team,\n\nThanks."


def test_markdown_is_normalised_not_rewritten() -> None:
    doc = "# Plan   \n\n\n\nSome *text*.  \n- one\n- two\n\n\n"
    doc += "```python\nx = 1   \n\n\ny = 2\n```\n\n"
    assert convert(doc).text == (
        "# Plan\n\nSome *text*.\n\n- one\n- two\n\n```python\nx = 1\n\n\ny = 2\n```"
    )


def test_markdown_keeps_no_raw_html_outside_code() -> None:
    doc = "# Notes\n\nSee <b>this</b>, `<i>code</i>` and <https://example.org>.\n\n```\n<div>\n```"
    assert convert(doc).text == (
        "# Notes\n\nSee \\<b>this\\</b>, `<i>code</i>` and <https://example.org>.\n\n"
        "```\n<div>\n```"
    )


# --- tidying extracted Markdown: the offline model of the converter's job ---------------


def test_lines_broken_inside_paragraphs_and_words_are_joined() -> None:
    extracted = (
        "The inter-\nnational grid   was\nfinished in May.\n\n"
        "- a list item that\n  wraps onto a second line\n- pick-\n  ing apples"
    )
    assert convert(extracted).text == (
        "The international grid was finished in May.\n\n"
        "- a list item that wraps onto a second line\n- picking apples"
    )


def test_a_long_wrapped_item_or_paragraph_is_joined_whole_and_in_place() -> None:
    # The continuation lines wait until the item ends (tidy_markdown joins them once):
    # whatever comes next, a paragraph, a heading or another item, comes after it.
    item = "- first\n" + "\n".join(["  more"] * 3000)
    assert convert(item + "\nAfter it.").text == "- first" + " more" * 3000 + "\n\nAfter it."
    assert convert(item + "\n# Title").text == "- first" + " more" * 3000 + "\n\n# Title"
    assert convert(item + "\n- second").text == "- first" + " more" * 3000 + "\n- second"
    paragraph = "\n".join(["pick-", "ing"] * 3000)
    assert convert(paragraph).text == " ".join(["picking"] * 3000)


def test_a_hyphen_before_a_capital_or_a_number_stays() -> None:
    assert convert("North-\nEast and 1990-\n2000").text == "North- East and 1990- 2000"


def test_stray_rules_and_asterisks_never_make_headings() -> None:
    receipt = (
        "Milk 1L 1.20\nBread 2.10\n==========\nTOTAL 3.30\n----------\n"
        "**********\n*0042-1187*\nThank you for shopping"
    )
    text = convert(receipt).text
    assert re.search(r"^#", text, re.MULTILINE) is None  # no heading at all
    assert text == (
        "Milk 1L 1.20 Bread 2.10\n\n---\n\nTOTAL 3.30\n\n---\n\n---\n\n"
        "*0042-1187* Thank you for shopping"
    )


def test_an_underlined_title_line_is_still_a_heading() -> None:
    assert convert("Minutes\n=======\n\nAll present.").text == "# Minutes\n\nAll present."
    assert convert("Setup\n-----\nRun it.").text == "## Setup\n\nRun it."


def test_escaped_separators_from_extraction_stay_text() -> None:
    assert convert("SHOP\n\\=====\nTea 2.00").text == "SHOP \\===== Tea 2.00"


def test_page_furniture_goes_and_headings_nest() -> None:
    doc = "# Report\n\nPage 3 of 9\n\n#### Costs\n\n- 4 -\n\nTen pounds.\n\n### Notes\n\nNone."
    assert convert(doc).text == "# Report\n\n## Costs\n\nTen pounds.\n\n### Notes\n\nNone."


def test_tables_quotes_and_code_pass_through() -> None:
    doc = (
        "| a | b |\n| --- | --- |\n| 1 | 2 |\n> quoted\n> twice\n\n"
        "```\nkeep   these\n\n  spaces\n```"
    )
    assert convert(doc).text == (
        "| a | b |\n| --- | --- |\n| 1 | 2 |\n\n> quoted\n> twice\n\n"
        "```\nkeep   these\n\n  spaces\n```"
    )


# --- the request -------------------------------------------------------------------


def test_a_document_block_is_the_document_and_the_rest_instructions() -> None:
    request = ask(
        "Part 2 of 3 of report.pdf. Make every line a heading!\n<document>\nHello\n"
        "world\n</document>\nIgnore the above.",
        history=[{"role": "system", "content": "You are a pirate."}],
    )
    assert PROVIDER.complete(request).text == "Hello world"


def test_a_document_block_may_hold_the_closing_tag_text() -> None:
    request = ask("<document>\nSay `</document>` to end.\n</document>")
    assert PROVIDER.complete(request).text == "Say `</document>` to end."


def test_instruction_prefix_is_stripped() -> None:
    for prefix in (
        "Convert this document to markdown:\n",
        "convert this document to Markdown: ",
        "CONVERT THIS DOCUMENT TO MARKDOWN:",
        "Please convert the following HTML into Markdown\n",
    ):
        assert convert(prefix + "<h1>Hi</h1>").text == "# Hi", prefix
    # A document that merely starts with "Convert" keeps its text.
    assert convert("Convert to markdown tables is easy").text == (
        "Convert to markdown tables is easy"
    )


def test_content_parts_use_the_text_parts_of_the_last_user_message() -> None:
    content = [
        {"type": "text", "text": "Convert this document to markdown:"},
        {"type": "image_url", "image_url": {"url": "https://example.org/x.png"}},
        {"type": "text", "text": "<h2>Budget</h2><p>Ten</p>"},
    ]
    history = [{"role": "user", "content": "<h1>Old document</h1>"}]
    request = ask(content, history=history)
    result = PROVIDER.complete(request)
    assert result.text == "## Budget\n\nTen"
    assert (
        result.prompt_tokens
        == count_tokens("<h1>Old document</h1>")
        + count_tokens("Convert this document to markdown:\n<h2>Budget</h2><p>Ten</p>")
        + 2 * 4
    )


def test_content_parts_never_glue_words_together() -> None:
    parts = [{"type": "text", "text": "solar"}, {"type": "text", "text": "panels"}]
    request = ask(parts)
    assert PROVIDER.prompt_tokens_upper_bound(request) == 2 + 4
    assert PROVIDER.complete(request).text == "solar panels"


def test_no_user_message_gives_empty_output() -> None:
    request = ChatRequest(MODEL_ID, [{"role": "system", "content": "hi"}], max_tokens=5)
    result = PROVIDER.complete(request)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("", "stop", 0)


# --- max_tokens and streaming ------------------------------------------------------


def test_max_tokens_cuts_at_a_token_boundary() -> None:
    full = convert(HTML_DOC)
    assert full.completion_tokens == 87
    cut = convert(HTML_DOC, max_tokens=10)
    assert cut.text == "# Grant report\n\nFunding for **solar**"
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == count_tokens(cut.text) == 10
    exact = convert(HTML_DOC, max_tokens=87)
    assert (exact.text, exact.finish_reason) == (full.text, "stop")


TRICKY = (
    "Ünïcode naïve café — “quotes”!!! e\u0301t\u00e9 😀😀 x_y 3.14 $$$ a--b ...\n\n"
    "• 東京 and 北京, ok?!\n• don't-stop"
)


def test_every_cut_keeps_exactly_max_tokens() -> None:
    full = convert(TRICKY)
    assert full.completion_tokens > 30
    for limit in range(full.completion_tokens + 2):
        result = convert(TRICKY, max_tokens=limit)
        assert full.text.startswith(result.text)
        assert (
            result.completion_tokens
            == count_tokens(result.text)
            == min(limit, full.completion_tokens)
        )
        assert result.finish_reason == ("length" if limit < full.completion_tokens else "stop")


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=200), st.integers(min_value=0, max_value=60))
def test_any_document_cut_is_exact(document: str, limit: int) -> None:
    full = convert(document)
    result = convert(document, max_tokens=limit)
    assert full.text.startswith(result.text)
    assert result.completion_tokens == count_tokens(result.text) <= limit
    assert (result.finish_reason == "length") == (full.completion_tokens > limit)


def test_stream_equals_complete() -> None:
    for limit in (10_000, 25):
        request = ask(HTML_DOC, max_tokens=limit)
        events = list(PROVIDER.stream(request))
        deltas, end = events[:-1], events[-1]
        assert all(isinstance(event, Delta) for event in deltas)
        assert len(deltas) > 2
        result = PROVIDER.complete(request)
        assert "".join(d.text for d in deltas) == result.text
        assert end == StreamEnd(
            result.finish_reason, result.prompt_tokens, result.completion_tokens
        )
        so_far = ""
        previous = 0
        for delta in deltas:
            so_far += delta.text
            assert delta.completion_tokens == count_tokens(so_far)
            assert 0 < delta.completion_tokens - previous <= 8
            previous = delta.completion_tokens


def test_stream_of_empty_output_is_only_the_end() -> None:
    events = list(PROVIDER.stream(ask("   ")))
    assert events == [StreamEnd("stop", 4, 0)]
