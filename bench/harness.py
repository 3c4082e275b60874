"""What every bench script shares: databases, the app under gunicorn, wrk, and setup.

The benches measure the engine through its public HTTP API only, under the Procfile's
gunicorn, so they keep working while the engine's internals change. Setup (grants
bigger than the API allows, the checks afterwards) goes through the engine's own
service functions and its tables, all of it in `Engine` below: the one place to adapt
if a service function's signature changes.
"""

from __future__ import annotations

import atexit
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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LUA = ROOT / "bench" / "post.lua"
ORIGIN = "http://localhost:5000"
# The API grants at most 100 requests; the pools use that many each.
POOL_GRANT_REQUESTS = 100
# A small document, as the converter sends it: a few headings, a list, a link, a table.
SMALL_DOC = (
    "<h1>Quarterly report</h1><p>Revenue grew <b>12%</b> on the quarter.</p>"
    "<h2>Highlights</h2><ul><li>New customers: 42</li><li>Churn: 1.5%</li>"
    "<li>See <a href='https://example.com/q3'>the full report</a></li></ul>"
    "<table><tr><th>Region</th><th>Sales</th></tr><tr><td>EU</td><td>120</td></tr>"
    "<tr><td>US</td><td>180</td></tr></table>"
)
METERED_BODY: dict[str, Any] = {
    "model": "local/markdown",
    "messages": [{"role": "user", "content": f"Convert this document to markdown:\n\n{SMALL_DOC}"}],
}
# Production turns the rate limits on; a benchmark measures the engine, not the limiter
# (config.py, rate_limit_settings: either switch turns them off).
RATE_LIMITS_OFF = {"WATTFARE_RATE_LIMITS": "off", "RATELIMIT_ENABLED": "false"}
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/wattfare_bench"


# --- tools --------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path, installing the Debian package when we are root and it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing the Debian package (apt-get install wrk)…", flush=True)
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


def gunicorn_command(app_module: str = "bench.bare_app:app", code: Path = ROOT) -> list[str]:
    """The Procfile's web command, serving `app_module` instead of app:app.

    Same workers, threads and settings as production (gunicorn also reads
    gunicorn.conf.py from the working directory, as it does in production); only the
    app module differs, and it is the real app plus the bench's bare routes.
    """
    for line in (code / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web" and "app:app" in command:
            command = re.sub(r"(?<![\w.])app:app\b", app_module, command.strip())
            # `VAR=value gunicorn …` is shell syntax: let bash run it (bash execs a
            # lone command, so gunicorn is the process we start and leads its group).
            return ["bash", "-c", command]
    sys.exit("Procfile has no `web: … app:app` line to run")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.*)$", cpuinfo.read_text(), re.M)
        cpu = found.group(1) if found else cpu
    wrk_path = shutil.which("wrk")
    wrk_version = (
        subprocess.run([wrk_path, "-v"], capture_output=True, text=True).stdout if wrk_path else ""
    )
    import flask
    import sqlalchemy

    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "flask": flask.__version__ if hasattr(flask, "__version__") else "?",
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk_version.split("[")[0].strip(),
        "gunicorn": shlex.join(gunicorn_command()),
        "load_at_start": os.getloadavg(),
    }


def postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(_admin_url(url)) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


# --- databases ------------------------------------------------------------------------------


def _admin_url(pg_url: str) -> str:
    return pg_url.rpartition("/")[0] + "/postgres"


def _pg_name(pg_url: str) -> str:
    name = pg_url.rpartition("/")[2]
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        sys.exit(f"the PostgreSQL URL must end in a plain database name, not {name!r}")
    if name in ("test", "postgres", "template0", "template1"):
        sys.exit(f"refusing to drop the {name!r} database: pass a bench database of your own")
    return name


def recreate_postgres(pg_url: str) -> str:
    """DROP and CREATE the database `pg_url` names; return the URL."""
    import psycopg

    name = _pg_name(pg_url)
    with psycopg.connect(_admin_url(pg_url), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return pg_url


def postgres_exists(pg_url: str) -> bool:
    import psycopg

    name = _pg_name(pg_url)
    with psycopg.connect(_admin_url(pg_url), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return found is not None


def with_database_name(pg_url: str, suffix: str) -> str:
    base, _, name = pg_url.rpartition("/")
    return f"{base}/{name}{suffix}"


def commit_latency(url: str, commits: int = 200) -> dict[str, float]:
    """p10 / p50 / p90 ms of a one-row INSERT and COMMIT on `url` (PostgreSQL).

    A metered call makes two durable commits, each waiting for the WAL to reach the
    disk; on a shared machine that wait is what moves most. Measured beside the figures
    so they can be read against it.
    """
    import psycopg

    plain = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)
    times = []
    with psycopg.connect(plain) as conn:
        # A real table: a temporary one is not WAL-logged, so its commits never wait.
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (n integer)")
        conn.commit()
        for n in range(commits):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", (n,))
            conn.commit()
            times.append((time.perf_counter() - started) * 1000)
        conn.execute("DROP TABLE bench_commit_probe")
        conn.commit()
    times.sort()
    return {
        q: round(times[int(len(times) * f)], 2)
        for q, f in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
    }


# --- the app under test ---------------------------------------------------------------------


@dataclass
class Target:
    """One app configuration: a database, keys and the environment gunicorn gets."""

    label: str
    backend: str
    database_url: str
    env: dict[str, str]
    secret_key: str
    workdir: Path
    code: Path = ROOT  # the checkout served (bench/run.py --baseline: an older commit's)


def make_target(
    label: str,
    backend: str,
    database_url: str | None,
    *,
    extra_env: dict[str, str] | None = None,
    migrate: bool = True,
    secret_key: str | None = None,
    code: Path = ROOT,
) -> Target:
    """The app's environment as in production, and its database migrated.

    `flask db upgrade` is the Procfile's release step, so the schema is the real one.
    `database_url` None: a new SQLite file in the target's own temporary folder.
    """
    from wattfare_demo.engine.tokens import new_app_id, new_secret_key

    workdir = Path(tempfile.mkdtemp(prefix=f"wattfare-bench-{label}-"))
    # Its SQLite file, wrk's input files and gunicorn's log go when the script ends.
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    database_url = database_url or sqlite_url(workdir)
    if secret_key is None:
        secret_key = new_secret_key("test", new_app_id())
    app_id = secret_key.split("_")[2]
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
        env.pop(name, None)  # the offline local/markdown model only, unless extra_env says
    env.pop("GUNICORN_CMD_ARGS", None)
    env.update(extra_env or {})
    if migrate:
        flask_command(env, "db", "upgrade", code=code)
    return Target(label, backend, database_url, env, secret_key, workdir, code)


def flask_command(env: dict[str, str], *args: str, code: Path = ROOT) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """The commit `ref` checked out beside this one (a detached git worktree in a
    temporary folder, removed at the end), to be served and measured in the same run.

    The bench sets its grants up with this checkout's engine functions, so the two must
    have the same tables and columns (indexes may differ): same_columns() checks that
    once the baseline's database is migrated by its own code.
    """
    folder = Path(tempfile.mkdtemp(prefix="wattfare-bench-baseline-"))
    checkout = folder / "code"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(checkout), ref],
        check=True,
    )
    try:
        if not (checkout / "bench" / "bare_app.py").exists():
            sys.exit(f"--baseline {ref}: it has no bench/bare_app.py to serve")
        yield checkout
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


def same_columns(target: Target, ref: str) -> None:
    """Exit unless `target`'s migrated database has this checkout's tables and columns."""
    from sqlalchemy import create_engine, inspect

    from wattfare_demo.config import database_url
    from wattfare_demo.extensions import db

    engine = create_engine(database_url(target.database_url, ""))
    try:
        inspector = inspect(engine)
        theirs = {
            table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names()
            if table != "alembic_version"
        }
    finally:
        engine.dispose()
    ours = {
        table.name: {column.name for column in table.columns} for table in db.metadata.sorted_tables
    }
    if theirs != ours:
        differ = sorted(t for t in ours.keys() | theirs.keys() if ours.get(t) != theirs.get(t))
        sys.exit(
            f"--baseline {ref}: its schema differs from this checkout's in {', '.join(differ)}, "
            "and the bench sets grants up with this checkout's code; pick a commit with the "
            "same tables and columns (indexes may differ)"
        )


def module_at(ref: str, path: str, name: str) -> Any:
    """The module at `path` as it was at commit `ref` (`git show` into a temporary file),
    importable beside the current one under `name`; its relative imports are made
    absolute, so they reach the current package."""
    import importlib.util

    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    package = path.removesuffix(".py").rsplit("/", 1)[0].replace("/", ".")
    source = re.sub(r"^from \.", f"from {package}.", source, flags=re.MULTILINE)
    file = Path(tempfile.mkdtemp(prefix="wattfare-bench-")) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sqlite_url(workdir: Path, name: str = "bench.db") -> str:
    return f"sqlite:///{workdir / name}"


@dataclass
class Server:
    label: str
    base: str
    arbiter: int

    def workers(self) -> list[int]:
        """The gunicorn worker processes (the arbiter's children)."""
        children = Path(f"/proc/{self.arbiter}/task/{self.arbiter}/children")
        if children.exists():
            return [int(p) for p in children.read_text().split()]
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.arbiter:
                found.append(int(stat.parent.name))
        return found

    def cpu_ns(self) -> int:
        """CPU time the workers have used so far, all their threads, in nanoseconds.

        From /proc/<pid>/task/<tid>/schedstat (time on CPU, ns), so it counts what the
        server itself spent, whatever else runs on the machine: a measure of cost that
        a busy machine disturbs far less than wall time.
        """
        return cpu_ns_of(self.workers())


def cpu_ns_of(pids: list[int]) -> int:
    """CPU time used so far by these processes (all their threads), nanoseconds."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread or process that just ended
    return total


def postgres_backends(url: str) -> list[int]:
    """The server processes serving connections to `url`'s database (not this one's).

    PostgreSQL runs one process per connection, on this machine: their CPU time is the
    database's share of a call, beside the workers' own.
    """
    if not url.startswith(("postgres://", "postgresql")):
        return []
    import psycopg

    plain = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)
    with psycopg.connect(plain) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextmanager
def served(target: Target, app_module: str = "bench.bare_app:app") -> Iterator[Server]:
    """Run gunicorn as the Procfile does for the duration of the block."""
    port = free_port()
    env = {**target.env, "PORT": str(port)}
    log_path = target.workdir / "gunicorn.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        gunicorn_command(app_module, target.code),
        cwd=target.code,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(target.label, f"http://127.0.0.1:{port}", proc.pid)
    try:
        _wait_until_up(server.base, proc, log_path)
        yield server
    finally:
        os.killpg(proc.pid, 15)  # gunicorn's own process group: the arbiter and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def _wait_until_up(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"gunicorn did not answer in 60 s:\n{log.read_text()[-3000:]}")


def measured(server: Server, database_url: str, run: Callable[[], Load]) -> Load:
    """`run()` (a wrk run), with the CPU the workers and the database spent per call."""
    backends = postgres_backends(database_url)
    workers, database = server.cpu_ns(), cpu_ns_of(backends)
    result = run()
    calls = max(result.requests, 1)
    result.worker_cpu_us_per_call = round((server.cpu_ns() - workers) / 1000 / calls, 1)
    if backends:
        result.database_cpu_us_per_call = round((cpu_ns_of(backends) - database) / 1000 / calls, 1)
    return result


class Engine:
    """The app, in this process, on a bench database: to set up and to check.

    Everything the benches need from the engine beyond its HTTP API is here.
    """

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

    def create_grants(
        self, count: int, requests: int, *, max_pusd: int | None = None, ttl: int = 3600
    ) -> list[str]:
        """Grants made by the engine's own service function (the API's 100 cap aside)."""
        from wattfare_demo.engine import grants
        from wattfare_demo.engine.apps import app_for_secret_key
        from wattfare_demo.extensions import db

        with self.flask.app_context():
            app = app_for_secret_key(self.secret_key)
            tokens = [
                grants.create_grant(
                    app, origin=ORIGIN, subject=None, requests=requests, max_pusd=max_pusd, ttl=ttl
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

    def grant_row(self, token: str) -> dict[str, Any]:
        from wattfare_demo.engine.tokens import sha256_hex

        return self.row(
            "SELECT id, requests, used, reserved, held_pusd FROM grants WHERE token_hash = :h",
            h=sha256_hex(token),
        )

    def settled(self) -> int:
        return self.scalar("SELECT count(*) FROM usage WHERE status = 'ok'")

    def drain(self, timeout: float = 15) -> int:
        """Wait for the calls in flight when wrk stopped to settle; the pending rows left."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self.scalar("SELECT count(*) FROM usage WHERE status = 'pending'")
            if pending == 0 or time.monotonic() > deadline:
                return pending
            time.sleep(0.1)

    def dispose(self) -> None:
        from wattfare_demo.extensions import db

        with self.flask.app_context():
            db.engine.dispose()


class GrantPool:
    """100-request grants made ahead of a wrk run, one per connection at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def for_calls(self, calls: float, connections: int) -> list[str]:
        count = math.ceil(calls / POOL_GRANT_REQUESTS) + connections
        return self.engine.create_grants(count, POOL_GRANT_REQUESTS)


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
    load_avg: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    # The gunicorn workers' CPU time per call during the run (Server.cpu_ns), and the
    # PostgreSQL server processes' (postgres_backends), when measured.
    worker_cpu_us_per_call: float | None = None
    database_cpu_us_per_call: float | None = None

    @property
    def clean(self) -> bool:
        """Every answer a 200 and no socket error or timeout."""
        return self.ok == self.requests and not self.errors


def wrk(
    wrk_path: str,
    url: str,
    workdir: Path,
    *,
    connections: int,
    seconds: float,
    body: dict[str, Any] | None = None,
    method: str = "POST",
    auth: str | None = None,
    auth_lines: list[str] | None = None,
    grant_lines: list[str] | None = None,
    uses: int = POOL_GRANT_REQUESTS,
) -> Load:
    """One wrk run with bench/post.lua, one wrk thread (the load shares the server's cores).

    wrk (4.x, not wrk2) measures each call from send to answer on a closed loop of
    `connections` connections, so at one connection p50 is the time one call takes.
    """
    env = {
        **os.environ,
        "BENCH_THREADS": "1",
        "BENCH_USES": str(uses),
        "BENCH_WIDTH": str(connections),
        "BENCH_METHOD": method,
    }
    body_file = workdir / "body.json"
    body_file.write_text(json.dumps(body) if body is not None else "")
    env["BENCH_BODY_FILE"] = str(body_file)
    if auth:
        env["BENCH_AUTH"] = auth
    for name, lines in (("BENCH_AUTH_FILE", auth_lines), ("BENCH_GRANTS_FILE", grant_lines)):
        env.pop(name, None)
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
    load_avg = load()
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
        load_avg=load_avg,
    )


@dataclass
class Checks:
    """Named pass/fail checks, printed at the end; any failure makes the exit status 1."""

    results: dict[str, bool] = field(default_factory=dict)

    def add(self, name: str, ok: bool) -> None:
        self.results[name] = bool(ok)

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.results.items() if not ok]

    def lines(self) -> list[str]:
        if not self.failed:
            return [f"- checks: all {len(self.results)} passed"]
        return [f"- check FAILED: {name}" for name in self.failed]


class RssSampler:
    """The peak resident memory of some processes, sampled every `interval` seconds."""

    def __init__(self, pids: list[int], interval: float = 0.005) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = {pid: rss_kib(pid) for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_kib(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
