"""The offline model `local/markdown` in-process, new beside old in one run: µs per call.

    .venv/bin/python bench/local_model.py            # timings, old vs new, ratios
    .venv/bin/python bench/local_model.py --quick    # fewer rounds (~20 s)
    .venv/bin/python bench/local_model.py --diff     # also: where the two outputs differ

The baseline is the HTML reader as it was before lxml (`--baseline-ref`, default the
commit before the change), read with `git show` into a temporary module: the product
code keeps no html.parser copy. Each document is timed at three steps: the HTML tree and
Markdown (`html_to_markdown`), the token count of the prompt (`count_tokens`, old rule
`len(findall)` vs `subn`), and the provider's whole step as the engine runs it
(`prompt_tokens_upper_bound` then `complete`), old reader vs new reader.

Documents: the bench's request (bench/harness.py, ~330 bytes of HTML) and a report page
made of that page's kinds of markup (headings, paragraphs, lists, tables, code, links,
quotes, nested divs) repeated to ~50 KB and ~400 KB; and 10,000 nested divs (deeper than
libxml2 reads: the new reader falls back to the text).
"""

from __future__ import annotations

import argparse
import re
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import METERED_BODY, module_at  # noqa: E402
from wattfare_demo.engine.providers import local, local_html  # noqa: E402
from wattfare_demo.engine.providers.base import ChatRequest  # noqa: E402

BASELINE_REF = "b0f540b"  # main before the lxml reader
HTML_PATH = "wattfare_demo/engine/providers/local_html.py"

SECTION = (
    "<div class='section'><h2>Region {i}</h2><p>Revenue grew <b>{i}%</b> on the quarter, "
    "see <a href='https://example.com/r/{i}'>the notes</a> &amp; the <em>appendix</em>."
    "<br>Second line.</p><ul><li>New customers: {i}<li>Churn: 1.{i}%<ul><li>nested "
    "<code>x &lt; y</code></li></ul></ul><table><tr><th>Item</th><th>Sales</th></tr>"
    "<tr><td>EU</td><td>{i}0</td><tr><td>US</td><td>{i}5</td></table><blockquote><p>"
    "Quoted <i>text</i></blockquote><pre class='language-python'>print({i})\n</pre>"
    "<div><div><span>deep <img src='/i/{i}.png' alt='chart {i}'></span></div></div></div>\n"
)


def report(size: int) -> str:
    parts = ["<html><head><title>Report</title></head><body><h1>Report</h1>"]
    total = len(parts[0])
    i = 0
    while total < size:
        part = SECTION.format(i=i)
        parts.append(part)
        total += len(part)
        i += 1
    parts.append("</body></html>")
    return "".join(parts)


def baseline_module(ref: str) -> ModuleType:
    """The HTML reader at `ref`, importable beside the current one."""
    module: ModuleType = module_at(ref, HTML_PATH, "old_local_html")
    return module


_TOKEN = re.compile(r"\w+|[^\w\s]")


def old_count(text: str) -> int:
    return len(_TOKEN.findall(text))


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    """The best of 5 rounds, in µs per call; a round lasts about `seconds` / 5."""
    once = timeit.timeit(fn, number=1)
    number = max(1, int(seconds / 5 / max(once, 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def provider_step(reader: Callable[[str], str]) -> Callable[[ChatRequest], None]:
    provider = local.LocalMarkdownProvider()

    def step(request: ChatRequest) -> None:
        saved = local.html_to_markdown
        local.html_to_markdown = reader  # type: ignore[assignment]
        try:
            provider.prompt_tokens_upper_bound(request)
            provider.complete(request)
        finally:
            local.html_to_markdown = saved

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--diff", action="store_true")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 2.0
    old = baseline_module(args.baseline_ref)

    prompt = METERED_BODY["messages"][0]["content"]
    documents = {
        "bench request": local._document(METERED_BODY["messages"]),
        "report 50 KB": report(50_000),
        "report 400 KB": report(400_000),
        "10,000 divs": "<div>" * 10_000 + "deep" + "</div>" * 10_000,
    }
    print(f"baseline: {HTML_PATH} at {args.baseline_ref} (html.parser); new: working tree (lxml)")
    print(f"{'document':<14} {'step':<22} {'old µs':>10} {'new µs':>10} {'old/new':>8}")
    for name, html in documents.items():
        same = old.html_to_markdown(html) == local_html.html_to_markdown(html)
        text = prompt if name == "bench request" else html
        request = ChatRequest(
            model="local/markdown",
            messages=[{"role": "user", "content": f"Convert this document to markdown:\n\n{html}"}],
            max_tokens=1_000_000,
        )
        rows = [
            (
                "html_to_markdown",
                lambda html=html: old.html_to_markdown(html),
                lambda html=html: local_html.html_to_markdown(html),
            ),
            (
                "count_tokens",
                lambda text=text: old_count(text),
                lambda text=text: local.count_tokens(text),
            ),
            (
                "provider step",
                lambda request=request: provider_step(old.html_to_markdown)(request),
                lambda request=request: provider_step(local_html.html_to_markdown)(request),
            ),
        ]
        for step, before, after in rows:
            t_old = per_call_us(before, seconds)
            t_new = per_call_us(after, seconds)
            print(f"{name:<14} {step:<22} {t_old:>10.1f} {t_new:>10.1f} {t_old / t_new:>7.2f}x")
        print(f"{name:<14} {'same Markdown':<22} {'yes' if same else 'NO':>10}")
        if args.diff and not same:
            import difflib

            diff = difflib.unified_diff(
                old.html_to_markdown(html).splitlines(),
                local_html.html_to_markdown(html).splitlines(),
                "old",
                "new",
                lineterm="",
                n=1,
            )
            print("\n".join(list(diff)[:40]))


if __name__ == "__main__":
    main()
