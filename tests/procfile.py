"""Run the app exactly as the Procfile says.

Each process type's command line is read from the Procfile and run by bash, the way
Heroku and Dokku run it (honcho uses /bin/sh; the lines are plain POSIX sh). Only the
environment is ours: the settings a platform would set, and the venv's bin/ first on
PATH so `gunicorn` and `flask` are this checkout's.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = os.path.dirname(sys.executable)
# What a developer's shell may carry that would change how the app starts.
_OURS = ("WATTFARE_", "OPENROUTER_", "GUNICORN_")
_ALSO_OURS = {"DATABASE_URL", "SECRET_KEY", "PORT", "WEB_CONCURRENCY", "DB_POOL_SIZE"}


def procfile() -> dict[str, str]:
    """{process type: command line}, parsed as Heroku does: `<type>: <command>`."""
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def procfile_env(settings: Mapping[str, str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_OURS) and key not in _ALSO_OURS
    }
    # Except the one the test session sets on purpose for every process it starts
    # (conftest.py): the races fire more calls per minute than the rate limits allow.
    if "WATTFARE_RATE_LIMITS" in os.environ:
        env["WATTFARE_RATE_LIMITS"] = os.environ["WATTFARE_RATE_LIMITS"]
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.update(settings)
    return env


def run_release(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", procfile()["release"]],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def private_schema(pg_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL schema of our own (dropped afterwards).

    Every table the app and Alembic make, alembic_version included, lands in it through
    the connection's search_path, so a release starts on a truly empty database and
    another test run sharing TEST_DATABASE_URL (its fixtures drop and create tables in
    `public`) cannot pull tables from under the workers, nor we from under it.
    """
    schema = f"wf_{secrets.token_hex(6)}"
    admin = create_engine(pg_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


class WebProcess:
    """The Procfile's `web` line on a free port, in its own process group.

    Its stdout and stderr go to files (a pipe nobody reads would block the workers once
    full); `output()` reads them back. Ready once /healthz answers 200 and every worker
    has booted.
    """

    def __init__(self, env: Mapping[str, str], logs: Path, workers: int = 4) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {**env, "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        self.stdout_path = logs / "web.stdout"
        self.stderr_path = logs / "web.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WebProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "-c", procfile()["web"]],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own group: stop gunicorn and its workers
            )
        try:
            self._wait_ready(deadline=time.monotonic() + 30)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            booted = self.output()[1].count("Booting worker with pid")
            try:
                ready = httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and booted >= self.workers:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stdout, stderr = self.output()
                raise RuntimeError(f"web did not start:\n{stderr}\n{stdout}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # gunicorn's graceful shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def output(self) -> tuple[str, str]:
        return (
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )
