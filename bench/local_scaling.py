"""Does `local/markdown`'s time grow in proportion to the document? Old beside new, one run.

    .venv/bin/python bench/local_scaling.py             # 2,000 and 8,000 lines a shape
    .venv/bin/python bench/local_scaling.py --lines 5000   # the baseline takes minutes

Each shape of plain text or HTML a visitor's file can have (a paragraph hard-wrapped on
every line, a list item continued over many lines, hyphenated line ends, hard breaks,
quotes, table rows, HTML paragraphs and list items) is converted at N and 4 N lines by
`convert_to_markdown`, with this checkout's Markdown tidier (plain text) and with the one
at `--baseline-ref` (read with `git show` into a temporary module). The HTML shapes go
through the HTML reader, the same on both sides: they show its own growth.
The ratio of the two times is 4 when the work is linear, 16 when quadratic. A stranger's
upload must never cost more than linear time (the quality bar); the baseline is the
commit before the tidier's joins were made linear (a 10,000-line paragraph took about a
minute there).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import module_at  # noqa: E402
from wattfare_demo.engine.providers import local, local_markdown  # noqa: E402

BASELINE_REF = "88aea06"
TIDIER_PATH = "wattfare_demo/engine/providers/local_markdown.py"
SHAPES: dict[str, Callable[[int], str]] = {
    "paragraph, a line break every 8 words": lambda n: "\n".join(
        ["alpha beta gamma delta epsilon zeta eta theta"] * n
    ),
    "one list item continued over n lines": lambda n: (
        "- item\n" + "\n".join(["  more words of the item"] * n)
    ),
    "hyphenated line ends": lambda n: "\n".join(["alpha beta gam-", "ma delta"] * (n // 2)),
    "hard line breaks": lambda n: "\n".join(["alpha beta gamma\\"] * n),
    "quote lines": lambda n: "\n".join(["> quoted line"] * n),
    "table rows": lambda n: "\n".join(["| a | b |"] * n),
    "HTML paragraph of n lines": lambda n: "<p>" + "\n".join(["alpha beta gamma"] * n) + "</p>",
    "HTML list of n items": lambda n: "<ul>" + "<li>alpha beta</li>" * n + "</ul>",
}


def baseline_tidier(ref: str) -> ModuleType:
    """The Markdown tidier at `ref`, importable beside the current one."""
    module: ModuleType = module_at(ref, TIDIER_PATH, "old_local_markdown")
    return module


def convert_with(tidier: ModuleType) -> Callable[[str], str]:
    """convert_to_markdown, with `tidier` in place of the current Markdown tidier."""

    def convert(text: str) -> str:
        saved = local.tidy_markdown
        local.tidy_markdown = tidier.tidy_markdown
        try:
            return local.convert_to_markdown(text)
        finally:
            local.tidy_markdown = saved

    return convert


def seconds(convert: Callable[[str], str], text: str, budget: float) -> float:
    """The best of up to 3 runs, fewer when one run takes more than `budget`."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        convert(text)
        best = min(best, time.perf_counter() - started)
        if best > budget:
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000, help="N: each shape at N and 4 N")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--budget", type=float, default=5.0, help="s: fewer runs above it")
    args = parser.parse_args()
    old, new = convert_with(baseline_tidier(args.baseline_ref)), convert_with(local_markdown)
    small, large = args.lines, 4 * args.lines
    print(
        f"| shape | {args.baseline_ref}: {small:,} → {large:,} lines | ratio | this "
        f"checkout: {small:,} → {large:,} lines | ratio |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, make in SHAPES.items():
        cells = []
        for convert in (old, new):
            a = seconds(convert, make(small), args.budget)
            b = seconds(convert, make(large), args.budget)
            cells += [f"{a * 1000:,.0f} → {b * 1000:,.0f} ms", f"×{b / a:.1f}"]  # noqa: RUF001
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
