"""Benchmark the engine under gunicorn with wrk: see bench/README.md.

    .venv/bin/python bench/run.py                      # SQLite and PostgreSQL, 3 runs each
    .venv/bin/python bench/run.py --backend sqlite --repeat 1 --duration 5

For each backend and run: a fresh database (`flask db upgrade`), the app under gunicorn
as the Procfile starts it (plus the bench-only bare route of bench/bare_app.py), then
wrk drives three scenarios:

1. metered `local/markdown` completions beside the bare endpoint, once with one
   connection (latency: p50 is the time one call takes, so p50(metered) - p50(bare) is
   the engine's own cost) and once with many (throughput);
2. one 1000-request grant hammered by 200 connections with far more calls than it
   allows: exactly 1000 successes, the rest 402, ledger rows == used (checked in the
   database afterwards);
3. grants created per second (POST /api/v1/grants with session JWTs).

Prints a table per backend (the median of the runs, metric by metric) and writes every
run's numbers as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LUA = ROOT / "bench" / "post.lua"
ORIGIN = "http://localhost:5000"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/wattfare_bench"
# The API grants at most 100 requests; the pools of scenario 1 use that many each.
POOL_GRANT_REQUESTS = 100
HAMMER_GRANT_REQUESTS = 1000
HAMMER_CONNECTIONS = 200
# A small document, as the converter sends it: a few headings, a list, a link, a table.
SMALL_DOC = (
    "<h1>Quarterly report</h1><p>Revenue grew <b>12%</b> on the quarter.</p>"
    "<h2>Highlights</h2><ul><li>New customers: 42</li><li>Churn: 1.5%</li>"
    "<li>See <a href='https://example.com/q3'>the full report</a></li></ul>"
    "<table><tr><th>Region</th><th>Sales</th></tr><tr><td>EU</td><td>120</td></tr>"
    "<tr><td>US</td><td>180</td></tr></table>"
)
METERED_BODY = {
    "model": "local/markdown",
    "messages": [{"role": "user", "content": f"Convert this document to markdown:\n\n{SMALL_DOC}"}],
}
# Production turns the rate limits on; a benchmark measures the engine, not the limiter
# (config.py, rate_limit_settings: either switch turns them off).
RATE_LIMITS_OFF = {"WATTFARE_RATE_LIMITS": "off", "RATELIMIT_ENABLED": "false"}


# --- tools --------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path, installing the Debian package when we are root and it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing the Debian package (apt-get install wrk)…")
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, check=True)
            subprocess.run(install, stdout=subprocess.DEVNULL, check=True)
        path = shutil.which("wrk")
    if not path:
        sys.exit(
            "bench needs wrk: `sudo apt-get install wrk` (Debian, Ubuntu); `brew install wrk`."
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_command(port: int) -> list[str]:
    """The Procfile's web command, serving bench.bare_app:app on `port`.

    Same workers, threads and settings as production (gunicorn also reads
    gunicorn.conf.py from the working directory, as it does in production); only the
    app module differs, and it is the real app plus the bare route.
    """
    procfile = ROOT / "Procfile"
    if procfile.exists():
        for line in procfile.read_text().splitlines():
            name, _, command = line.partition(":")
            if name.strip() == "web" and "app:app" in command:
                command = re.sub(r"(?<![\w.])app:app\b", "bench.bare_app:app", command.strip())
                # `VAR=value gunicorn …` is shell syntax: let bash run it (bash execs
                # a lone command, so gunicorn still leads the process group).
                return ["bash", "-c", command]
    # No Procfile yet: what it is meant to run, two workers of four threads.
    return [
        "gunicorn",
        "--workers=2",
        "--threads=4",
        f"--bind=127.0.0.1:{port}",
        "bench.bare_app:app",
    ]


# --- the app under test ---------------------------------------------------------------------


@dataclass
class Target:
    backend: str
    database_url: str
    env: dict[str, str]
    secret_key: str
    workdir: Path


def fresh_database(backend: str, pg_url: str, workdir: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    import psycopg

    base, _, name = pg_url.rpartition("/")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        sys.exit(f"--pg-url must end in a plain database name, not {name!r}")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return pg_url


def make_target(backend: str, pg_url: str) -> Target:
    from wattfare_demo.engine.tokens import new_app_id, new_secret_key

    workdir = Path(tempfile.mkdtemp(prefix=f"wattfare-bench-{backend}-"))
    database_url = fresh_database(backend, pg_url, workdir)
    app_id = new_app_id()
    secret_key = new_secret_key("test", app_id)
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "WATTFARE_ENV": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "DATABASE_URL": database_url,
        "WATTFARE_PUBLISHABLE_KEY": f"pk_test_{app_id}",
        "WATTFARE_SECRET_KEY": secret_key,
        "WATTFARE_ALLOWED_ORIGINS": ORIGIN,
        "WATTFARE_BENCH_BARE": "1",
        **RATE_LIMITS_OFF,
    }
    for name in ("WATTFARE_UPSTREAM_URL", "WATTFARE_UPSTREAM_API_KEY", "OPENROUTER_API_KEY"):
        env.pop(name, None)  # the offline local/markdown model only
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Target(backend, database_url, env, secret_key, workdir)


@contextmanager
def served(target: Target) -> Iterator[str]:
    """Run gunicorn for the duration of the block; yield its base URL."""
    port = free_port()
    env = {**target.env, "PORT": str(port)}
    log = open(target.workdir / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        gunicorn_command(port),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, proc, target.workdir / "gunicorn.log")
        yield base
    finally:
        os.killpg(proc.pid, 15)  # gunicorn's own process group: the arbiter and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def wait_until_up(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            r = httpx.post(f"{base}/bench/bare", json=METERED_BODY, timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"gunicorn did not answer in 30 s:\n{log.read_text()[-3000:]}")


class Engine:
    """The app, in this process, on the benchmark's database: to set up and to check."""

    def __init__(self, target: Target) -> None:
        saved = dict(os.environ)
        os.environ.update(target.env)
        try:
            from wattfare_demo import create_app

            self.flask = create_app()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.secret_key = target.secret_key

    def create_grants(self, count: int, requests: int) -> list[str]:
        """Grants made by the engine's own service function (the API's 100 cap aside)."""
        from wattfare_demo.engine import grants
        from wattfare_demo.engine.apps import app_for_secret_key
        from wattfare_demo.extensions import db

        with self.flask.app_context():
            app = app_for_secret_key(self.secret_key)
            tokens = [
                grants.create_grant(
                    app, origin=ORIGIN, subject=None, requests=requests, max_pusd=None, ttl=3600
                ).token
                for _ in range(count)
            ]
            db.session.remove()
        return tokens

    def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        from wattfare_demo.extensions import db

        with self.flask.app_context():
            value = db.session.execute(text(sql), params).scalar()
            db.session.remove()
            return value

    def row(self, sql: str, **params: Any) -> dict[str, Any]:
        from sqlalchemy import text

        from wattfare_demo.extensions import db

        with self.flask.app_context():
            row = db.session.execute(text(sql), params).mappings().one()
            db.session.remove()
            return dict(row)

    def dispose(self) -> None:
        from wattfare_demo.extensions import db

        with self.flask.app_context():
            db.engine.dispose()


def mint_sessions(secret_key: str, count: int) -> list[str]:
    """Session JWTs as an app's server mints them (like tests/helpers.py mint_session)."""
    from joserfc import jwt
    from joserfc.jwk import OctKey

    from wattfare_demo.engine.sessions import AUDIENCE
    from wattfare_demo.engine.tokens import parse_secret_key, session_signing_key

    key = OctKey.import_key(session_signing_key(secret_key))
    app_id = parse_secret_key(secret_key).app_id
    now = int(time.time())
    return [
        jwt.encode(
            {"alg": "HS256"},
            {
                "iss": app_id,
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + 600,
                "jti": uuid.uuid4().hex,
                "origin": ORIGIN,
                "requests": 5,  # the question the session allows (the body asks for 5)
            },
            key,
        )
        for _ in range(count)
    ]


# --- wrk ------------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)


def wrk(
    wrk_path: str,
    url: str,
    workdir: Path,
    *,
    connections: int,
    seconds: float,
    body: dict[str, Any],
    auth: str | None = None,
    auth_lines: list[str] | None = None,
    grant_lines: list[str] | None = None,
    uses: int = POOL_GRANT_REQUESTS,
) -> Load:
    """One wrk run with bench/post.lua; one wrk thread (the load shares our 2 cores)."""
    env = {**os.environ, "BENCH_THREADS": "1", "BENCH_USES": str(uses)}
    env["BENCH_WIDTH"] = str(connections)
    body_file = workdir / "body.json"
    body_file.write_text(json.dumps(body))
    env["BENCH_BODY_FILE"] = str(body_file)
    if auth:
        env["BENCH_AUTH"] = auth
    for name, lines in (("BENCH_AUTH_FILE", auth_lines), ("BENCH_GRANTS_FILE", grant_lines)):
        if lines:
            path = workdir / f"{name.lower()}.txt"
            path.write_text("\n".join(lines) + "\n")
            env[name] = str(path)
    command = [
        wrk_path,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout=30s",
        "-s",
        str(LUA),
        url,
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^BENCH_RESULT (.*)$", out, re.M)
    if not match:
        raise RuntimeError(f"no result from wrk:\n{out}")
    raw = json.loads(match.group(1))
    secs = raw["duration_us"] / 1e6
    return Load(
        requests=raw["requests"],
        seconds=round(secs, 2),
        rps=round(raw["requests"] / secs, 1),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        statuses=raw["statuses"],
        # "status" counts non-2xx answers, which `statuses` already shows.
        errors={k: v for k, v in raw["errors"].items() if v and k != "status"},
    )


# --- the scenarios ---------------------------------------------------------------------------


@dataclass
class Run:
    backend: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    results: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


def pool_for(engine: Engine, seconds: float, max_rate: int, connections: int) -> list[str]:
    """Enough 100-request grants for `seconds` of calls at up to `max_rate` a second."""
    count = math.ceil(max_rate * seconds / POOL_GRANT_REQUESTS) + connections
    return engine.create_grants(count, POOL_GRANT_REQUESTS)


def drain(engine: Engine, timeout: float = 10) -> int:
    """Wait for the calls in flight when wrk stopped to settle; the pending rows left."""
    deadline = time.monotonic() + timeout
    while True:
        pending = engine.scalar("SELECT count(*) FROM usage WHERE status = 'pending'")
        if pending == 0 or time.monotonic() > deadline:
            return pending
        time.sleep(0.1)


def metered_vs_bare(
    run: Run, engine: Engine, wrk_path: str, base: str, target: Target, args: argparse.Namespace
) -> None:
    sk = target.secret_key
    metered_url = f"{base}/api/v1/chat/completions"
    bare_url = f"{base}/bench/bare"
    ok_before = engine.scalar("SELECT count(*) FROM usage WHERE status = 'ok'")
    metered_ok = 0
    # Warm up: each worker imports lazily, opens its pool and fills its caches.
    pool = pool_for(engine, 2, args.max_rate, args.connections)
    wrk(
        wrk_path,
        bare_url,
        target.workdir,
        connections=args.connections,
        seconds=2,
        body=METERED_BODY,
    )
    warm = wrk(
        wrk_path,
        metered_url,
        target.workdir,
        connections=args.connections,
        seconds=2,
        body=METERED_BODY,
        auth=sk,
        grant_lines=pool,
    )
    metered_ok += warm.ok
    for label, connections in (("latency", 1), ("throughput", args.connections)):
        bare = wrk(
            wrk_path,
            bare_url,
            target.workdir,
            connections=connections,
            seconds=args.duration,
            body=METERED_BODY,
        )
        pool = pool_for(engine, args.duration, args.max_rate, connections)
        metered = wrk(
            wrk_path,
            metered_url,
            target.workdir,
            connections=connections,
            seconds=args.duration,
            body=METERED_BODY,
            auth=sk,
            grant_lines=pool,
        )
        metered_ok += metered.ok
        run.results[f"{label}_bare"] = asdict(bare)
        run.results[f"{label}_metered"] = asdict(metered)
        run.checks[f"{label}: every metered call 200"] = metered.ok == metered.requests and (
            not metered.errors
        )
    pending = drain(engine)
    ok_after = engine.scalar("SELECT count(*) FROM usage WHERE status = 'ok'")
    # wrk stops on the clock and does not count the calls still in flight then (at most
    # one per connection per wrk run), which the server finishes and settles.
    in_flight = 2 * args.connections + 1
    run.checks["ledger: one settled row per 200"] = (
        0 <= ok_after - ok_before - metered_ok <= in_flight
    )
    run.checks["ledger: no hold left pending"] = pending == 0
    lat_bare = run.results["latency_bare"]
    lat_metered = run.results["latency_metered"]
    run.results["engine_cost_p50_ms"] = round(lat_metered["p50_ms"] - lat_bare["p50_ms"], 3)
    run.results["latency_ratio_p50"] = round(lat_metered["p50_ms"] / lat_bare["p50_ms"], 2)
    run.results["throughput_ratio"] = round(
        run.results["throughput_metered"]["rps"] / run.results["throughput_bare"]["rps"], 3
    )


def hammer(
    run: Run, engine: Engine, wrk_path: str, base: str, target: Target, args: argparse.Namespace
) -> None:
    (token,) = engine.create_grants(1, HAMMER_GRANT_REQUESTS)
    # wrk runs for a time, not a count: run long enough for about 2.5x as many calls as
    # the grant allows at the rate scenario 1 measured (one grant's row is hotter than
    # a pool's, so this errs long), and never less than --hammer-duration.
    rate = run.results["throughput_metered"]["rps"]
    seconds = max(args.hammer_duration, math.ceil(2.5 * HAMMER_GRANT_REQUESTS / rate))
    load = wrk(
        wrk_path,
        f"{base}/api/v1/chat/completions",
        target.workdir,
        connections=HAMMER_CONNECTIONS,
        seconds=seconds,
        body=METERED_BODY,
        auth=target.secret_key,
        grant_lines=[token],
        uses=10**9,
    )
    from wattfare_demo.engine.tokens import sha256_hex

    drain(engine)
    grant = engine.row(
        "SELECT id, requests, used, reserved, held_pusd FROM grants WHERE token_hash = :h",
        h=sha256_hex(token),
    )
    ledger = engine.row(
        "SELECT count(*) AS rows, "
        "coalesce(sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), 0) AS ok "
        "FROM usage WHERE grant_id = :g",
        g=grant["id"],
    )
    refused = load.statuses.get("402", 0)
    run.results["hammer"] = {
        **asdict(load),
        "grant": grant,
        "ledger_rows": ledger["rows"],
        "ledger_ok": ledger["ok"],
    }
    run.checks["hammer: more calls than the grant allows"] = load.requests > HAMMER_GRANT_REQUESTS
    run.checks["hammer: exactly 1000 x 200"] = load.ok == HAMMER_GRANT_REQUESTS
    run.checks["hammer: every other call 402"] = refused == load.requests - load.ok
    run.checks["hammer: no socket errors or timeouts"] = not load.errors
    run.checks["hammer: grant used == 1000, nothing held"] = (
        grant["used"] == HAMMER_GRANT_REQUESTS
        and grant["reserved"] == 0
        and grant["held_pusd"] == 0
    )
    run.checks["hammer: ledger rows == used"] = ledger["rows"] == ledger["ok"] == grant["used"]


def grant_creation(
    run: Run, engine: Engine, wrk_path: str, base: str, target: Target, args: argparse.Namespace
) -> None:
    # One session JWT per call we may send (a session creates one grant: the engine
    # refuses a replayed jti with 409); they are minted before the clock starts.
    sessions = mint_sessions(target.secret_key, min(args.max_rate * args.duration, 50_000))
    before = engine.scalar("SELECT count(*) FROM grants")
    load = wrk(
        wrk_path,
        f"{base}/api/v1/grants",
        target.workdir,
        connections=args.connections,
        seconds=args.duration,
        body={"requests": 5},
        auth_lines=sessions,
    )
    time.sleep(1)  # let the calls in flight when wrk stopped finish (they are not counted)
    after = engine.scalar("SELECT count(*) FROM grants")
    run.results["grants"] = asdict(load)
    run.checks["grants: every call 200"] = load.ok == load.requests and not load.errors
    run.checks["grants: one row per 200"] = 0 <= after - before - load.ok <= args.connections


def one_run(backend: str, wrk_path: str, args: argparse.Namespace) -> Run:
    run = Run(backend, os.getloadavg())
    target = make_target(backend, args.pg_url)
    engine = Engine(target)
    try:
        with served(target) as base:
            metered_vs_bare(run, engine, wrk_path, base, target, args)
            hammer(run, engine, wrk_path, base, target, args)
            grant_creation(run, engine, wrk_path, base, target, args)
    finally:
        engine.dispose()
    run.load_after = os.getloadavg()
    shutil.rmtree(target.workdir, ignore_errors=True)
    return run


# --- report ------------------------------------------------------------------------------------


def median_of(runs: list[Run], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run.results
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def report(backend: str, runs: list[Run], target_ms: float, min_rps: float | None) -> list[str]:
    def m(*path: str) -> float:
        return median_of(runs, *path)

    cost = m("engine_cost_p50_ms")
    rps = m("throughput_metered", "rps")
    lines = [
        f"## {backend}: median of {len(runs)} run(s)",
        "",
        "| scenario | calls/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    conns = runs[0].results["connections"]
    for label, key in (
        ("bare endpoint, 1 connection", "latency_bare"),
        ("metered completion, 1 connection", "latency_metered"),
        (f"bare endpoint, {conns} connections", "throughput_bare"),
        (f"metered completion, {conns} connections", "throughput_metered"),
        (f"grant creation, {conns} connections", "grants"),
        (f"1000-request grant, {HAMMER_CONNECTIONS} connections", "hammer"),
    ):
        lines.append(
            f"| {label} | {m(key, 'rps'):.0f} | {m(key, 'p50_ms'):.2f} | {m(key, 'p99_ms'):.2f} |"
        )
    met = "meets" if cost <= target_ms else "MISSES"
    lines += [
        "",
        f"- engine's own cost, p50(metered) - p50(bare), 1 connection: **{cost:.2f} ms** "
        f"({met} the {target_ms:g} ms target); p50 ratio {m('latency_ratio_p50'):.2f}x",
        f"- metered throughput: **{rps:.0f} calls/s**, "
        f"{m('throughput_ratio') * 100:.0f}% of the bare endpoint's"
        + (
            f" ({'meets' if rps >= min_rps else 'MISSES'} the {min_rps:g}/s target)"
            if min_rps
            else ""
        ),
        f"- grants created: **{m('grants', 'rps'):.0f}/s**",
    ]
    for run_no, run in enumerate(runs, 1):
        hammer_result = run.results["hammer"]
        lines.append(
            f"- run {run_no} hammer: {hammer_result['requests']} calls -> "
            f"{hammer_result['statuses']}; grant used {hammer_result['grant']['used']}, "
            f"ledger rows {hammer_result['ledger_rows']}"
        )
    failed = [
        (i, name) for i, run in enumerate(runs, 1) for name, ok in run.checks.items() if not ok
    ]
    lines.append(
        "- checks: all passed"
        if not failed
        else "- checks FAILED: " + "; ".join(f"run {i}: {name}" for i, name in failed)
    )
    return lines


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.*)$", cpuinfo.read_text(), re.M)
        cpu = found.group(1) if found else cpu
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk_version.split("[")[0].strip(),
        "gunicorn": shlex.join(gunicorn_command(0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (median)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="for throughput runs")
    parser.add_argument("--hammer-duration", type=int, default=5, help="at least, seconds")
    parser.add_argument(
        "--max-rate", type=int, default=4000, help="calls/s the grant pools are sized for"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", PG_DEFAULT),
        help="a database the bench may DROP and re-create",
    )
    parser.add_argument("--out", default=None, help="write every run's numbers here (JSON)")
    args = parser.parse_args()
    wrk_path = ensure_wrk()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    info = machine()
    if "postgresql" in backends:
        import psycopg

        with psycopg.connect(args.pg_url.rpartition("/")[0] + "/postgres") as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    print(json.dumps(info, indent=2))
    all_runs: dict[str, list[Run]] = {}
    for backend in backends:
        runs = []
        for i in range(args.repeat):
            print(f"[{backend}] run {i + 1}/{args.repeat}, load {os.getloadavg()}", flush=True)
            run = one_run(backend, wrk_path, args)
            run.results["connections"] = args.connections
            runs.append(run)
            print(
                f"  cost p50 {run.results['engine_cost_p50_ms']:.2f} ms, metered "
                f"{run.results['throughput_metered']['rps']:.0f}/s, bare "
                f"{run.results['throughput_bare']['rps']:.0f}/s, grants "
                f"{run.results['grants']['rps']:.0f}/s, checks "
                f"{'ok' if all(run.checks.values()) else run.checks}",
                flush=True,
            )
        all_runs[backend] = runs
    print()
    for backend, runs in all_runs.items():
        target_ms = 2.0 if backend == "sqlite" else 5.0
        print("\n".join(report(backend, runs, target_ms, 500 if backend == "sqlite" else None)))
        print()
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": vars(args),
                    "runs": {b: [asdict(r) for r in rs] for b, rs in all_runs.items()},
                },
                indent=2,
            )
        )
    failed = any(not ok for runs in all_runs.values() for run in runs for ok in run.checks.values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
