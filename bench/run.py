"""The metered call beside a bare Flask endpoint, SQLite and PostgreSQL in one run.

    .venv/bin/python bench/run.py --quick          # under two minutes
    .venv/bin/python bench/run.py                  # the reported figures (~8 minutes)

Both backends are served at once, each by the Procfile's gunicorn (2 workers) with the
bench-only baselines beside the real API (bench/baselines.py). wrk then measures, in
rounds that alternate the order (bare/metered, SQLite/PostgreSQL) so a machine that
gets busier or quieter during the run moves both sides alike:

- 1 connection: p50 and p99 of the bare endpoint and of a metered `local/markdown`
  completion; engine cost = p50(metered) - p50(bare), per round.
- 8 connections: calls per second; throughput ratio = metered / bare, per round. The
  gunicorn workers' own CPU time per call (from /proc) is printed beside it: it is
  what the busy machine disturbs least.

Medians over the rounds are printed beside the targets of issue 15 (engine cost
<= 0.5 ms SQLite, <= 1.5 ms PostgreSQL; throughput >= 40 % / >= 25 % of the bare
endpoint's). Then the exactness check: 200 connections on one 1,000-request grant, far
more calls than it allows, must end at exactly 1,000 (200s, the rest 402; the grant and
the ledger checked in the database). Every metered call of the other runs must answer 200
and leave one settled ledger row. The exit status is 1 if any check failed (a missed
target is reported, not a failure). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    METERED_BODY,
    ORIGIN,
    PG_DEFAULT,
    Checks,
    Engine,
    GrantPool,
    Load,
    Server,
    Target,
    baseline_checkout,
    commit_latency,
    ensure_wrk,
    load,
    machine,
    make_target,
    measured,
    median,
    postgres_version,
    recreate_postgres,
    same_columns,
    served,
    with_database_name,
    wrk,
)

LATENCY_CONNECTIONS = 1
THROUGHPUT_CONNECTIONS = 8
HAMMER_GRANT_REQUESTS = 1000
HAMMER_CONNECTIONS = 200
# Issue 15's targets: engine cost at 1 connection (ms), throughput ratio at 8.
TARGETS = {"sqlite": (0.5, 0.40), "postgresql": (1.5, 0.25)}
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass
class Side:
    """One backend: its app, its server, and everything measured on it."""

    backend: str
    target: Target
    engine: Engine
    server: Server
    pool: GrantPool
    warm_rate: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    hammer: dict[str, Any] = field(default_factory=dict)
    grants: dict[str, Any] = field(default_factory=dict)
    metered_ok: int = 0
    in_flight_allowance: int = 0
    checks: Checks = field(default_factory=Checks)
    baseline: str | None = None  # --baseline: the commit this side serves

    @property
    def name(self) -> str:
        return NAMES[self.backend] + (f" at {self.baseline}" if self.baseline else "")


BARE_PATHS = {"bare": "/bench/bare", "model": "/bench/bare-model"}


def measure(side: Side, wrk_path: str, kind: str, *, connections: int, seconds: float) -> Load:
    """One wrk run, with the workers' CPU: `kind` is "metered" (a metered completion),
    "bare" (the bare endpoint) or "model" (the bare endpoint running the local model)."""
    base = side.server.base
    if kind == "metered":
        # Grants for about twice the rate the warm-up saw, one per connection at a time.
        grants = side.pool.for_calls(2 * max(side.warm_rate, 500) * seconds, connections)
        result = measured(
            side.server,
            side.target.database_url,
            lambda: wrk(
                wrk_path,
                f"{base}/api/v1/chat/completions",
                side.target.workdir,
                connections=connections,
                seconds=seconds,
                body=METERED_BODY,
                auth=side.target.secret_key,
                grant_lines=grants,
            ),
        )
        side.metered_ok += result.ok
        # wrk stops on the clock: the calls then in flight (one per connection) are
        # not counted by wrk but finished and settled by the server.
        side.in_flight_allowance += connections
        return result
    return measured(
        side.server,
        side.target.database_url,
        lambda: wrk(
            wrk_path,
            f"{base}{BARE_PATHS[kind]}",
            side.target.workdir,
            connections=connections,
            seconds=seconds,
            body=METERED_BODY,
        ),
    )


def warm_up(side: Side, wrk_path: str) -> None:
    """Each worker imports lazily, opens its pool and fills its caches on first calls."""
    for kind in BARE_PATHS:
        measure(side, wrk_path, kind, connections=THROUGHPUT_CONNECTIONS, seconds=1)
    warm = measure(side, wrk_path, "metered", connections=THROUGHPUT_CONNECTIONS, seconds=2)
    side.warm_rate = warm.rps
    side.checks.add(f"{side.name} warm-up: every metered call 200", warm.clean)


def one_round(side: Side, wrk_path: str, round_no: int, connections: int, seconds: float) -> None:
    # At 1 connection also the bare endpoint running the model, to split the engine's
    # cost into the model's and the metering's.
    kinds = ["bare", "model", "metered"] if connections == 1 else ["bare", "metered"]
    order = kinds if round_no % 2 == 0 else kinds[::-1]
    results = {
        kind: measure(side, wrk_path, kind, connections=connections, seconds=seconds)
        for kind in order
    }
    bare, metered = results["bare"], results["metered"]
    model = results.get("model")
    side.checks.add(
        f"{side.name} round {round_no + 1}, {connections} conn: every metered call 200",
        metered.clean,
    )
    side.checks.add(
        f"{side.name} round {round_no + 1}, {connections} conn: bare endpoints all 200",
        bare.clean and (model is None or model.clean),
    )
    side.rounds.append(
        {
            "round": round_no + 1,
            "connections": connections,
            "bare": asdict(bare),
            "metered": asdict(metered),
            "model": asdict(model) if model else None,
            "cost_p50_ms": round(metered.p50_ms - bare.p50_ms, 3),
            "metering_p50_ms": round(metered.p50_ms - model.p50_ms, 3) if model else None,
            "cost_p99_ms": round(metered.p99_ms - bare.p99_ms, 3),
            "throughput_ratio": round(metered.rps / bare.rps, 4) if bare.rps else math.nan,
        }
    )


def hammer(side: Side, wrk_path: str, min_seconds: int) -> None:
    """200 connections on one 1,000-request grant: exactly 1,000 calls may succeed.

    wrk runs for a time, not a count, and one hot row goes as fast as its commits: on a
    busy PostgreSQL that can be 50 calls a second. So wrk runs in spans (the first of
    about the time the grant should last at the rate the 8-connection runs saw) until
    the grant has refused at least as many calls as it allowed. Calls in flight when a
    span stops before the grant is used up are finished and settled by the server but
    not counted by wrk; the database says what was charged.
    """
    (token,) = side.engine.create_grants(1, HAMMER_GRANT_REQUESTS)
    rates = [r["metered"]["rps"] for r in side.rounds if r["connections"] > 1]
    rate = median(rates) if rates else side.warm_rate
    span = max(min_seconds, math.ceil(2.5 * HAMMER_GRANT_REQUESTS / max(rate, 1)))
    spans: list[Load] = []
    deadline = time.monotonic() + 300
    while True:
        spans.append(
            wrk(
                wrk_path,
                f"{side.server.base}/api/v1/chat/completions",
                side.target.workdir,
                connections=HAMMER_CONNECTIONS,
                seconds=span,
                body=METERED_BODY,
                auth=side.target.secret_key,
                grant_lines=[token],
                uses=10**9,
            )
        )
        refused = sum(s.statuses.get("402", 0) for s in spans)
        if refused >= HAMMER_GRANT_REQUESTS or time.monotonic() > deadline:
            break
        span = max(2, min_seconds)
    pending = side.engine.drain()
    grant = side.engine.grant_row(token)
    ledger = side.engine.row(
        "SELECT count(*) AS rows, "
        "coalesce(sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), 0) AS ok "
        "FROM usage WHERE grant_id = :g",
        g=grant["id"],
    )
    statuses: dict[str, int] = {}
    for s in spans:
        for status, n in s.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    requests = sum(s.requests for s in spans)
    ok = statuses.get("200", 0)
    # Before the grant was used up, a span's stop leaves up to one call per connection
    # in flight, charged but not seen by wrk; after it, all calls in flight are 402s.
    unseen = HAMMER_CONNECTIONS * (len(spans) - 1)
    side.hammer = {
        "requests": requests,
        "statuses": statuses,
        "spans": [asdict(s) for s in spans],
        "grant": grant,
        "ledger": ledger,
        "pending": pending,
    }
    n = side.name
    side.checks.add(
        f"{n} race: at least as many calls refused as allowed",
        statuses.get("402", 0) >= HAMMER_GRANT_REQUESTS,
    )
    side.checks.add(
        f"{n} race: 1,000 answered 200 (in one span exactly; in several, up to one a "
        "connection a span unseen)",
        ok == HAMMER_GRANT_REQUESTS if len(spans) == 1 else 0 <= 1000 - ok <= unseen,
    )
    side.checks.add(f"{n} race: every other call 402", statuses.get("402", 0) == requests - ok)
    side.checks.add(f"{n} race: no socket errors or timeouts", not any(s.errors for s in spans))
    side.checks.add(
        f"{n} race: grant used 1,000, nothing reserved or held",
        grant["used"] == HAMMER_GRANT_REQUESTS
        and grant["reserved"] == 0
        and not grant["held_pusd"],
    )
    side.checks.add(
        f"{n} race: 1,000 ledger rows, all settled",
        ledger["rows"] == ledger["ok"] == HAMMER_GRANT_REQUESTS,
    )


def grant_creation(side: Side, wrk_path: str, seconds: float) -> None:
    """POST /api/v1/grants with session tokens minted by the SDK, as an app's server does."""
    from wattfare_demo.sdk import Wattfare

    wf = Wattfare(side.target.secret_key, base_url=side.server.base)
    count = int(min(2000 * seconds, 40_000))
    sessions = [wf.create_session(origin=ORIGIN, requests=5).token for _ in range(count)]
    before = side.engine.scalar("SELECT count(*) FROM grants")
    result = wrk(
        wrk_path,
        f"{side.server.base}/api/v1/grants",
        side.target.workdir,
        connections=THROUGHPUT_CONNECTIONS,
        seconds=seconds,
        body={"requests": 5},
        auth_lines=sessions,
    )
    time.sleep(1)  # the calls in flight when wrk stopped (not counted by wrk) finish
    after = side.engine.scalar("SELECT count(*) FROM grants")
    side.grants = asdict(result)
    side.checks.add(f"{side.name} grants: every call 200", result.clean)
    side.checks.add(
        f"{side.name} grants: one row per 200",
        0 <= after - before - result.ok <= THROUGHPUT_CONNECTIONS,
    )


def ledger_checks(side: Side, settled_before_race: int) -> None:
    pending = side.engine.drain()
    extra = settled_before_race - side.metered_ok
    side.checks.add(f"{side.name} ledger: no hold left pending", pending == 0)
    side.checks.add(
        f"{side.name} ledger: one settled row per metered 200 (+ calls in flight at wrk's stop)",
        0 <= extra <= side.in_flight_allowance,
    )


# --- report ---------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))} to {fmt.format(max(values))}" if len(values) > 1 else ""


def report(sides: list[Side], rounds: int) -> list[str]:
    lines = [
        f"## Side by side: medians of {rounds} round(s)",
        "",
        "| | bare Flask | metered | ratio / difference (range over rounds) | target |",
        "|---|---:|---:|---:|---|",
    ]
    for side in sides:
        cost_target, ratio_target = TARGETS[side.backend]
        at = {c: [r for r in side.rounds if r["connections"] == c] for c in (1, 8)}
        tput = at[THROUGHPUT_CONNECTIONS]
        lat = at[LATENCY_CONNECTIONS]
        ratios = [r["throughput_ratio"] for r in tput]
        ratio = median(ratios)
        lines.append(
            f"| {side.name}, {THROUGHPUT_CONNECTIONS} connections | "
            f"{median([r['bare']['rps'] for r in tput]):,.0f} calls/s | "
            f"{median([r['metered']['rps'] for r in tput]):,.0f} calls/s | "
            f"**{ratio:.2f}** ({_spread(ratios, '{:.2f}')}) | "
            f"≥ {ratio_target:.2f} {'✓' if ratio >= ratio_target else '✗'} |"
        )
        costs = [r["cost_p50_ms"] for r in lat]
        cost = median(costs)
        lines.append(
            f"| {side.name}, 1 connection, p50 | "
            f"{_ms(median([r['bare']['p50_ms'] for r in lat]))} | "
            f"{_ms(median([r['metered']['p50_ms'] for r in lat]))} | "
            f"**+{cost:.2f} ms** ({_spread(costs, '{:+.2f}')}) | "
            f"≤ {cost_target} ms {'✓' if cost <= cost_target else '✗'} |"
        )
        model = [r["model"]["p50_ms"] - r["bare"]["p50_ms"] for r in lat]
        metering = [r["metering_p50_ms"] for r in lat]
        lines.append(
            f"| … of which the local model (bare endpoint + model, p50) | | "
            f"{_ms(median([r['model']['p50_ms'] for r in lat]))} | "
            f"+{median(model):.2f} ms ({_spread(model, '{:+.2f}')}) | |"
        )
        lines.append(
            f"| … and the metering, p50(metered) - p50(bare + model) | | | "
            f"+{median(metering):.2f} ms ({_spread(metering, '{:+.2f}')}) | |"
        )
        p99 = [r["cost_p99_ms"] for r in lat]
        lines.append(
            f"| {side.name}, 1 connection, p99 | "
            f"{_ms(median([r['bare']['p99_ms'] for r in lat]))} | "
            f"{_ms(median([r['metered']['p99_ms'] for r in lat]))} | "
            f"+{median(p99):.2f} ms ({_spread(p99, '{:+.2f}')}) | reported |"
        )

        def cpu(runs: list[dict[str, Any]], kind: str, field: str) -> float:
            return median([r[kind][field] for r in runs if r[kind][field] is not None])

        field = "worker_cpu_us_per_call"
        bare_cpu = [cpu(lat, "bare", field), cpu(tput, "bare", field)]
        metered_cpu = [cpu(lat, "metered", field), cpu(tput, "metered", field)]
        lines.append(
            f"| {side.name}, gunicorn workers' CPU per call, 1 / {THROUGHPUT_CONNECTIONS} "
            f"connections | {bare_cpu[0]:,.0f} / {bare_cpu[1]:,.0f} µs | "
            f"{metered_cpu[0]:,.0f} / {metered_cpu[1]:,.0f} µs | "
            f"+{metered_cpu[0] - bare_cpu[0]:,.0f} / +{metered_cpu[1] - bare_cpu[1]:,.0f} µs | — |"
        )
        field = "database_cpu_us_per_call"
        if any(r["metered"][field] is not None for r in tput):
            lines.append(
                f"| {side.name}, database server's CPU per metered call, 1 / "
                f"{THROUGHPUT_CONNECTIONS} connections | | {cpu(lat, 'metered', field):,.0f} / "
                f"{cpu(tput, 'metered', field):,.0f} µs | | — |"
            )
    lines.append("")
    for side in sides:
        h = side.hammer
        if h:
            refused = h["statuses"].get("402", 0)
            spans = f" in {len(h['spans'])} wrk runs" if len(h["spans"]) > 1 else ""
            lines.append(
                f"- {side.name} race: {HAMMER_CONNECTIONS} connections, {h['requests']:,} calls"
                f"{spans} "
                f"on one {HAMMER_GRANT_REQUESTS:,}-request grant → {h['statuses'].get('200', 0):,}"
                f" x 200, {refused:,} x 402; grant used {h['grant']['used']:,}, reserved "
                f"{h['grant']['reserved']}, held {h['grant']['held_pusd']} pUSD; ledger "
                f"{h['ledger']['rows']:,} rows, {h['ledger']['ok']:,} settled"
            )
        if side.grants:
            lines.append(
                f"- {side.name} grants created: {side.grants['rps']:,.0f}/s at "
                f"{THROUGHPUT_CONNECTIONS} connections (p50 {side.grants['p50_ms']:.2f} ms)"
            )
    for side in sides:
        lines += [line.replace("- ", f"- {side.name} ", 1) for line in side.checks.lines()]
    return lines


def before_after(sides: list[Side], ref: str) -> list[str]:
    """The baseline commit and this checkout, measured in the same rounds, per backend."""
    lines = [
        f"## Before ({ref}) and after (this checkout), in the same rounds",
        "",
        "| | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]

    def figures(side: Side) -> dict[str, float]:
        lat = [r for r in side.rounds if r["connections"] == LATENCY_CONNECTIONS]
        tput = [r for r in side.rounds if r["connections"] == THROUGHPUT_CONNECTIONS]
        field = "worker_cpu_us_per_call"
        return {
            "engine cost p50, ms": median([r["cost_p50_ms"] for r in lat]),
            "engine cost p99, ms": median([r["cost_p99_ms"] for r in lat]),
            "metering (without the model) p50, ms": median([r["metering_p50_ms"] for r in lat]),
            "throughput ratio, 8 connections": median([r["throughput_ratio"] for r in tput]),
            "workers' CPU per metered call, 8 connections, µs": median(
                [r["metered"][field] for r in tput if r["metered"][field] is not None]
            ),
        }

    for backend in dict.fromkeys(side.backend for side in sides):
        before = next(s for s in sides if s.backend == backend and s.baseline)
        after = next(s for s in sides if s.backend == backend and not s.baseline)
        old, new = figures(before), figures(after)
        for name in old:
            ratio = new[name] / old[name] if old[name] else math.nan
            lines.append(
                f"| {NAMES[backend]}: {name} | {old[name]:,.2f} | {new[name]:,.2f} | {ratio:.2f} |"
            )
    return lines


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s: under 2 minutes")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--duration", type=int, default=None, help="s per wrk run; 10 (3)")
    parser.add_argument("--hammer-duration", type=int, default=None, help="at least, s; 5 (3)")
    parser.add_argument("--grants", action="store_true", help="also measure grants created/s")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", PG_DEFAULT),
        help="a database the bench may DROP and re-create (BENCH_DATABASE_URL)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also serve this commit (same schema) and measure it in the same rounds",
    )
    parser.add_argument("--out", default=None, help="write every run's numbers here (JSON)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3 if args.quick else 10)
    hammer_seconds = args.hammer_duration or (3 if args.quick else 5)
    started = time.monotonic()
    wrk_path = ensure_wrk()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    info = machine()
    if "postgresql" in backends:
        info["postgresql"] = postgres_version(args.pg_url)
    print(json.dumps(info, indent=2), flush=True)
    sides: list[Side] = []
    with ExitStack() as stack:
        codes: list[tuple[str | None, Path | None]] = [(None, None)]
        if args.baseline:
            codes.append((args.baseline, stack.enter_context(baseline_checkout(args.baseline))))
        for backend in backends:
            for ref, code in codes:
                # A fresh database, migrated as the Procfile's release step does.
                url = None
                if backend == "postgresql":
                    url = with_database_name(args.pg_url, "_baseline") if ref else args.pg_url
                    recreate_postgres(url)
                label = f"{backend}-baseline" if ref else backend
                target = make_target(label, backend, url, **({"code": code} if code else {}))
                if ref:
                    same_columns(target, ref)
                engine = Engine(target)
                stack.callback(engine.dispose)
                server = stack.enter_context(served(target))
                side = Side(backend, target, engine, server, GrantPool(engine), baseline=ref)
                sides.append(side)
        if "postgresql" in backends:
            info["commit_ms_at_start"] = commit_latency(args.pg_url)
        for side in sides:
            warm_up(side, wrk_path)
        for round_no in range(rounds):
            for connections in (LATENCY_CONNECTIONS, THROUGHPUT_CONNECTIONS):
                order = sides if round_no % 2 == 0 else list(reversed(sides))
                for side in order:
                    one_round(side, wrk_path, round_no, connections, duration)
            print(
                f"round {round_no + 1}/{rounds} done, load {load()}: "
                + "; ".join(
                    f"{s.name} +{s.rounds[-2]['cost_p50_ms']:.2f} ms, "
                    f"ratio {s.rounds[-1]['throughput_ratio']:.2f}"
                    for s in sides
                ),
                flush=True,
            )
        for side in sides:
            settled = side.engine.settled()
            ledger_checks(side, settled)
            if side.baseline:
                continue  # the baseline is measured for speed; exactness is this code's
            hammer(side, wrk_path, hammer_seconds)
            if args.grants:
                grant_creation(side, wrk_path, duration)
    if "postgresql" in backends:
        info["commit_ms_at_end"] = commit_latency(args.pg_url)
    elapsed = time.monotonic() - started
    print()
    print("\n".join(report(sides, rounds)))
    if args.baseline:
        print()
        print("\n".join(before_after(sides, args.baseline)))
    if "postgresql" in backends:
        print(
            "- PostgreSQL: one-row INSERT + COMMIT, ms (p10, p50, p90): at the start "
            f"{info['commit_ms_at_start']}, at the end {info['commit_ms_at_end']}"
        )
    print(f"\n({elapsed:.0f} s, load {load()} at the end)")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {**vars(args), "rounds": rounds, "duration": duration},
                    "elapsed_s": round(elapsed, 1),
                    "sides": {
                        s.backend: {
                            "rounds": s.rounds,
                            "hammer": s.hammer,
                            "grants": s.grants,
                            "checks": s.checks.results,
                        }
                        for s in sides
                    },
                },
                indent=2,
                default=str,
            )
        )
    sys.exit(1 if any(s.checks.failed for s in sides) else 0)


if __name__ == "__main__":
    main()
