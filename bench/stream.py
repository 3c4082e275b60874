"""Streaming: the engine's cost per streamed chunk, and a 10,000-chunk stream's memory.

    .venv/bin/python bench/stream.py               # SQLite (the database is touched twice a call)
    .venv/bin/python bench/stream.py --backend postgresql

One Procfile gunicorn (2 workers) serves the app with the bench-only routes, its model
provider pointed at bench/upstream.py (a minimal OpenAI-compatible server in its own
process). Two kinds of stream, each beside its baseline, each at `--small` and
`--large` chunks, `--repeat` times, interleaved:

- `local/markdown`: a metered streamed completion of a plain-text document of 8 x N
  tokens (the model streams 8 tokens a chunk, so N chunks), beside `POST
  /bench/bare-stream`, which parses the same body and streams the same tokens in the same
  chunks with no engine (bench/baselines.py).
- an upstream model (`bench/stream`): a metered stream the engine proxies from the
  upstream, N chunks of one word, beside the same stream read from the upstream directly.

Per chunk, from the slope between the two sizes (so the per-call costs cancel): the
gunicorn workers' CPU time (from /proc: what the engine spends, whatever else runs on
the machine) and the client's wall time. Engine cost per chunk = the metered slope minus
the baseline's (the direct upstream stream uses no worker at all).

Memory: the workers' resident memory (VmRSS) is sampled every 5 ms during each stream;
reported are its peak above the level before the stream, and its level after each of
`--memory-streams` 10,000-chunk streams in a row: over the second half (the first brings
both workers' heaps to what a large document needs) any growth is memory kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    PG_DEFAULT,
    ROOT,
    Checks,
    Engine,
    RssSampler,
    Server,
    free_port,
    load,
    machine,
    make_target,
    median,
    recreate_postgres,
    rss_kib,
    served,
)

UPSTREAM_MODEL = "bench/stream"
LINE = "alpha beta gamma delta epsilon zeta eta theta"  # 8 tokens: one local chunk
MEMORY_GROWTH_LIMIT_KIB = 2048


@dataclass
class Sample:
    kind: str
    size: int  # the chunks asked for
    chunks: int  # the content chunks that came (the bare stream adds the instruction line's)
    wall_ms: float
    cpu_ms: float  # the workers' CPU during the stream
    peak_rss_kib: int  # the highest any worker's RSS rose above its level before


def local_body(chunks: int) -> dict[str, Any]:
    document = "\n".join([LINE] * chunks)
    return {
        "model": "local/markdown",
        "messages": [
            {"role": "user", "content": f"Convert this document to markdown:\n{document}"}
        ],
        "max_tokens": 8 * chunks + 64,
        "stream": True,
    }


def upstream_body(chunks: int) -> dict[str, Any]:
    return {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": f"chunks={chunks}"}],
        "max_tokens": 1_000_000,
        "stream": True,
    }


def read_stream(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]):
    """POST a streamed call and read it to the end: (content chunks, saw [DONE], error)."""
    chunks = 0
    done = False
    error = None
    with client.stream("POST", url, json=body, headers=headers, timeout=120) as response:
        if response.status_code != 200:
            return 0, False, f"HTTP {response.status_code}: {response.read()[:300]!r}"
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    chunks += 1
    return chunks, done, error


class Bench:
    def __init__(self, server: Server, engine: Engine, upstream_url: str, secret_key: str) -> None:
        self.server = server
        self.engine = engine
        self.upstream_url = upstream_url
        self.secret_key = secret_key
        self.client = httpx.Client()
        self.grants: list[str] = []
        self.checks = Checks()

    def _grant(self) -> str:
        if not self.grants:
            self.grants = self.engine.create_grants(50, 1)
        return self.grants.pop()

    def one(self, kind: str, chunks: int) -> Sample:
        base = self.server.base
        if kind == "metered local":
            url, body = f"{base}/api/v1/chat/completions", local_body(chunks)
        elif kind == "bare stream":
            url, body = f"{base}/bench/bare-stream", local_body(chunks)
        elif kind == "metered upstream":
            url, body = f"{base}/api/v1/chat/completions", upstream_body(chunks)
        else:  # "upstream direct"
            url, body = f"{self.upstream_url}/chat/completions", upstream_body(chunks)
        headers = {}
        if kind.startswith("metered"):
            headers = {
                "Authorization": f"Bearer {self.secret_key}",
                "x-wattfare-grant": self._grant(),
            }
        workers = self.server.workers()
        before = {pid: rss_kib(pid) for pid in workers}
        cpu = self.server.cpu_ns()
        with RssSampler(workers) as rss:
            started = time.perf_counter()
            got, done, error = read_stream(self.client, url, body, headers)
            wall = time.perf_counter() - started
        cpu_ms = (self.server.cpu_ns() - cpu) / 1e6
        self.checks.add(
            f"{kind}, {chunks:,} chunks: all chunks, [DONE], no error",
            got >= chunks and done and error is None,
        )
        peak = max(rss.peak[pid] - before[pid] for pid in workers)
        return Sample(kind, chunks, got, wall * 1000, cpu_ms, peak)


def slope(samples: list[Sample], kind: str, field: str) -> float:
    """Per chunk, µs: median at the large size minus median at the small, over the chunks."""
    sizes = sorted({s.size for s in samples if s.kind == kind})
    small, large = sizes[0], sizes[-1]

    def at(n: int, name: str) -> float:
        return median([getattr(s, name) for s in samples if s.kind == kind and s.size == n])

    chunks = at(large, "chunks") - at(small, "chunks")
    return (at(large, field) - at(small, field)) * 1000 / chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-streams", type=int, default=10, help="large streams in a row")
    parser.add_argument(
        "--pg-url", default=os.environ.get("BENCH_DATABASE_URL", PG_DEFAULT), help="re-created"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.monotonic()
    info = machine()
    print(json.dumps(info, indent=2), flush=True)
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}/v1"
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)],
        start_new_session=True,
    )
    try:
        _wait_for(upstream_url)
        url = recreate_postgres(args.pg_url) if args.backend == "postgresql" else None
        target = make_target(
            f"stream-{args.backend}",
            args.backend,
            url,
            extra_env={
                "WATTFARE_UPSTREAM_URL": upstream_url,
                "WATTFARE_UPSTREAM_API_KEY": "bench-upstream-key",
                "WATTFARE_PRICES": json.dumps({UPSTREAM_MODEL: {"input": 1, "output": 2}}),
                # Production with a paid provider needs a daily ceiling: a generous one,
                # so the app takes its budget holds as a deployed one does.
                "WATTFARE_DAILY_BUDGET_USD": "1000",
            },
        )
        engine = Engine(target)
        try:
            with served(target) as server:
                samples, memory, checks = run(
                    Bench(server, engine, upstream_url, target.secret_key), args
                )
                checks.add("no hold left pending", engine.drain() == 0)
        finally:
            engine.dispose()
    finally:
        os.killpg(upstream.pid, 15)
        upstream.wait()
    lines = report(samples, memory, args)
    print()
    print("\n".join(lines + checks.lines()))
    print(f"\n({time.monotonic() - started:.0f} s, load {load()} at the end)")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": vars(args),
                    "samples": [asdict(s) for s in samples],
                    "memory": memory,
                    "checks": checks.results,
                },
                indent=2,
            )
        )
    sys.exit(1 if checks.failed else 0)


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{url}/chat/completions", json={"messages": [{"content": "chunks=1"}]})
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    sys.exit("bench/upstream.py did not start")


KINDS = ("metered local", "bare stream", "metered upstream", "upstream direct")


def run(bench: Bench, args: argparse.Namespace) -> tuple[list[Sample], dict[str, Any], Checks]:
    for kind in KINDS:  # warm-up: imports, pools, the upstream connection
        bench.one(kind, args.small)
    samples: list[Sample] = []
    for i in range(args.repeat):
        kinds = KINDS if i % 2 == 0 else KINDS[::-1]
        for chunks in (args.small, args.large):
            for kind in kinds:
                samples.append(bench.one(kind, chunks))
        print(f"repeat {i + 1}/{args.repeat} done, load {load()}", flush=True)
    # Memory kept: the workers' RSS after each of `memory_streams` large streams in a row.
    # The first half brings both workers' heaps to what a large document needs (which
    # worker serves a call is up to the kernel); after that, a stream that kept anything
    # would show as growth.
    memory: dict[str, Any] = {}
    for kind in ("metered local", "metered upstream"):
        levels = []
        for _ in range(args.memory_streams):
            bench.one(kind, args.large)
            levels.append(sum(rss_kib(pid) for pid in bench.server.workers()))
        half = levels[len(levels) // 2 - 1]
        growth = levels[-1] - half
        memory[kind] = {"workers_rss_kib_after_each": levels, "growth_kib": growth}
        bench.checks.add(
            f"{kind}: the second half of {args.memory_streams} x {args.large:,}-chunk streams "
            f"grows the workers by under {MEMORY_GROWTH_LIMIT_KIB // 1024} MB",
            growth < MEMORY_GROWTH_LIMIT_KIB,
        )
    return samples, memory, bench.checks


def report(samples: list[Sample], memory: dict[str, Any], args: argparse.Namespace) -> list[str]:
    def m(kind: str, chunks: int, field: str) -> float:
        return median([getattr(s, field) for s in samples if s.kind == kind and s.size == chunks])

    lines = [
        f"## Streaming: medians of {args.repeat}, {args.backend}",
        "",
        f"| stream | {args.small:,} chunks, wall | {args.large:,} chunks, wall | workers' CPU "
        f"per chunk | client wall per chunk | peak RSS rise, {args.small:,} / {args.large:,} "
        "chunks |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        lines.append(
            f"| {kind} | {m(kind, args.small, 'wall_ms'):,.1f} ms | "
            f"{m(kind, args.large, 'wall_ms'):,.1f} ms | "
            f"{slope(samples, kind, 'cpu_ms'):.1f} µs | {slope(samples, kind, 'wall_ms'):.1f} µs | "
            f"{m(kind, args.small, 'peak_rss_kib') / 1024:,.1f} / "
            f"{m(kind, args.large, 'peak_rss_kib') / 1024:,.1f} MB |"
        )
    local = slope(samples, "metered local", "cpu_ms") - slope(samples, "bare stream", "cpu_ms")
    proxied = slope(samples, "metered upstream", "cpu_ms")
    lines += [
        "",
        f"- engine's CPU per chunk, local/markdown (metered - bare stream): **{local:.1f} µs**",
        f"- engine's CPU per chunk, proxying an upstream stream: **{proxied:.1f} µs**",
    ]
    for kind, kept in memory.items():
        levels = ", ".join(f"{k / 1024:.1f}" for k in kept["workers_rss_kib_after_each"])
        lines.append(
            f"- {kind}: workers' RSS after each of {len(kept['workers_rss_kib_after_each'])} "
            f"{args.large:,}-chunk streams (MB, both workers): {levels}; "
            f"over the second half {kept['growth_kib'] / 1024:+.1f} MB"
        )
    return lines


if __name__ == "__main__":
    main()
