"""Where the microseconds of one metered call go: a per-call budget, measured in-process.

Used by `bench/profile_call.py --budget`. Each call is one WSGI call of the real app
(the environ is built before the clock starts, the response body is read to the end),
with probes around:

- the engine's steps as api.py and metering.py call them (`PROBES`: authentication,
  JSON parsing, validation, the retry check, the model route, the prompt-token count,
  reserve, the provider, the response body, settle, the balance headers);
- every before-request, after-request and teardown function the app registered, and
  the view function itself (so Flask's and Werkzeug's own work is what is left over);
- every SQL statement (SQLAlchemy's before/after_cursor_execute: the driver and the
  database), and each COMMIT, ROLLBACK and pool pre-ping the driver runs (the dialect's
  do_commit / do_rollback / do_ping), wherever they happen, and SQLAlchemy's own steps
  around them (the session's transaction and pool checkout, Core's statement
  execution, the ORM's loading of objects).

A probe is a timer around the original function; nothing else changes. A probe whose
target no longer exists (the engine is being rewritten) is reported as missing, not an
error, and its time falls into its parent's "own" time. Times are per call, median and
mean over the calls: the means add up to the total exactly; a node's "own" time is its
time minus its probed children's (Python, SQLAlchemy, Flask glue), median over calls.

The probes cost about a microsecond each; the report shows the uninstrumented call beside
the instrumented one, so that overhead is visible rather than hidden.
"""

from __future__ import annotations

import functools
import importlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import event

# (module, attribute path, label). Module-level functions are looked up by api.py at call
# time (`grants.reserve(...)`, `json_body()`), so wrapping the module attribute times
# every call; methods are wrapped on their class.
PROBES: list[tuple[str, str, str]] = [
    ("wattfare_demo.engine.api", "authenticate_app", "authentication: the app by key hash"),
    ("wattfare_demo.engine.api", "grant_token_header", "grant header"),
    ("wattfare_demo.engine.api", "json_body", "JSON parse of the body"),
    ("wattfare_demo.engine.api", "parse_chat_request", "validation of the chat request"),
    ("wattfare_demo.engine.idempotency", "from_request", "Idempotency-Key check"),
    ("wattfare_demo.engine.idempotency", "fingerprint", "retry: the request's fingerprint"),
    ("wattfare_demo.engine.metering", "run", "metering: the call's lifecycle"),
    ("wattfare_demo.engine.providers", "ProviderRegistry.route", "model route and price"),
    ("wattfare_demo.engine.idempotency", "Retry.earlier_answer", "retry: an earlier answer?"),
    (
        "wattfare_demo.engine.providers.local",
        "LocalMarkdownProvider.prompt_tokens_upper_bound",
        "prompt tokens (the hold's size)",
    ),
    ("wattfare_demo.engine.grants", "reserve", "reserve"),
    ("wattfare_demo.engine.providers.local", "LocalMarkdownProvider.complete", "provider"),
    (
        "wattfare_demo.engine.chat_completions",
        "ChatCompletionsRenderer.body",
        "response: the completion object",
    ),
    ("wattfare_demo.engine.metering", "caller_gone", "response: is the caller still there?"),
    ("wattfare_demo.engine.idempotency", "Retry.wants_answer", "retry: keep the answer?"),
    ("wattfare_demo.engine.grants", "settle", "settle"),
    ("wattfare_demo.engine.grants", "release", "release"),
    ("wattfare_demo.engine.metering", "balance_headers", "balance headers"),
    ("wattfare_demo.request_log", "_emit", "request log: format and write the line"),
    ("sqlalchemy.orm", "Session.commit", "session.commit()"),
    # The accounting's own transactions (engine/driver.py): a pooled connection, the
    # driver's COMMIT, the connection back.
    ("wattfare_demo.engine.driver", "Transaction.__init__", "driver: connection from the pool"),
    ("wattfare_demo.engine.driver", "Transaction.commit", "driver: COMMIT"),
    ("wattfare_demo.engine.driver", "Transaction.rollback", "driver: ROLLBACK"),
    ("wattfare_demo.engine.driver", "Transaction.close", "driver: connection back to the pool"),
    # SQLAlchemy's own steps around each statement: the session finding (or beginning)
    # its transaction and connection, and the ORM turning rows into objects.
    ("sqlalchemy.orm.session", "Session._connection_for_bind", "session: transaction + connection"),
    (
        "sqlalchemy.orm.context",
        "ORMCompileState.orm_setup_cursor_result",
        "ORM: rows into objects",
    ),
    (
        "sqlalchemy.engine.base",
        "Connection._execute_context",
        "SQLAlchemy Core: run a statement (cached SQL, context, cursor, result)",
    ),
    ("sqlalchemy.engine", "Connection.close", "connection back to the pool"),
]

ROOT = "WSGI call"


@dataclass
class Node:
    label: str
    started: int
    children: list[Node] = field(default_factory=list)
    elapsed: int = 0
    round_trips: int = 0  # on the root: PostgreSQL round trips in the call


class Recorder:
    """A tree of timed nodes for the call in progress."""

    def __init__(self) -> None:
        self.stack: list[Node] = []
        self.active = False
        self.round_trips = 0

    def push(self, label: str) -> Node | None:
        if not self.active:
            return None
        node = Node(label, time.perf_counter_ns())
        self.stack[-1].children.append(node)
        self.stack.append(node)
        return node

    def pop(self, node: Node | None) -> None:
        if node is None:
            return
        node.elapsed = time.perf_counter_ns() - node.started
        # A generator or callback may end out of order; pop down to this node.
        while self.stack and self.stack[-1] is not node:
            self.stack.pop()
        if self.stack:
            self.stack.pop()

    @contextmanager
    def call(self) -> Iterator[Node]:
        root = Node(ROOT, time.perf_counter_ns())
        self.stack = [root]
        self.active = True
        self.round_trips = 0
        try:
            yield root
        finally:
            root.elapsed = time.perf_counter_ns() - root.started
            root.round_trips = self.round_trips
            self.active = False
            self.stack = []


def _timed(recorder: Recorder, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        node = recorder.push(label)
        try:
            return func(*args, **kwargs)
        finally:
            recorder.pop(node)

    return wrapper


@dataclass
class Instrumentation:
    recorder: Recorder
    missing: list[str]
    undo: list[Callable[[], None]]

    def remove(self) -> None:
        for undo in reversed(self.undo):
            undo()


def instrument(app: Flask) -> Instrumentation:
    from wattfare_demo.extensions import db

    recorder = Recorder()
    missing: list[str] = []
    undo: list[Callable[[], None]] = []

    def wrap_attr(owner: Any, name: str, label: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(original, classmethod | staticmethod):
            wrapped: Any = type(original)(_timed(recorder, label, original.__func__))
        else:
            wrapped = _timed(recorder, label, original)
        setattr(owner, name, wrapped)
        undo.append(functools.partial(setattr, owner, name, original))

    for module_name, path, label in PROBES:
        try:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            if not (name in vars(owner) if isinstance(owner, type) else hasattr(owner, name)):
                raise AttributeError(name)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{path}")
            continue
        wrap_attr(owner, name, label)

    # The app's hooks and views, wrapped where Flask keeps them.
    for kind, registry in (
        ("before_request", app.before_request_funcs),
        ("after_request", app.after_request_funcs),
        ("teardown_request", app.teardown_request_funcs),
    ):
        for funcs in registry.values():
            for i, func in enumerate(list(funcs)):
                funcs[i] = _timed(recorder, f"{kind}: {_name(func)}", func)
                undo.append(functools.partial(funcs.__setitem__, i, func))
    for i, func in enumerate(list(app.teardown_appcontext_funcs)):
        app.teardown_appcontext_funcs[i] = _timed(
            recorder, f"teardown_appcontext: {_name(func)}", func
        )
        undo.append(functools.partial(app.teardown_appcontext_funcs.__setitem__, i, func))
    for endpoint, view in list(app.view_functions.items()):
        app.view_functions[endpoint] = _timed(recorder, f"view: {endpoint}", view)
        undo.append(functools.partial(app.view_functions.__setitem__, endpoint, view))

    # The database: each statement, and each COMMIT / ROLLBACK the driver runs.
    from bench.statements import Statement

    with app.app_context():
        engine = db.engine
    open_nodes: dict[int, Node | None] = {}

    def before(_conn, cursor, sql, _params, _context, _many) -> None:
        summary = Statement("", sql, None).summary
        open_nodes[id(cursor)] = recorder.push(f"SQL {summary}")

    def after(_conn, cursor, _sql, _params, _context, _many) -> None:
        recorder.pop(open_nodes.pop(id(cursor), None))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    undo.append(lambda: event.remove(engine, "before_cursor_execute", before))
    undo.append(lambda: event.remove(engine, "after_cursor_execute", after))
    # The session takes a connection from the pool for its first statement after each
    # commit (and gives it back at the commit): Engine.connect is that checkout.
    original_connect = engine.connect
    engine.connect = _timed(recorder, "connection from the pool", original_connect)
    undo.append(functools.partial(setattr, engine, "connect", original_connect))
    dialect = engine.dialect
    for name, label in (
        ("do_commit", "COMMIT (driver)"),
        ("do_rollback", "ROLLBACK (driver)"),
        # pool_pre_ping (config.py, PostgreSQL): a round trip at each checkout.
        ("do_ping", "pre-ping (a round trip)"),
    ):
        original = getattr(dialect, name)
        setattr(dialect, name, _timed(recorder, label, original))
        undo.append(functools.partial(setattr, dialect, name, original))
    # PostgreSQL round trips: each statement a cursor sends, and each BEGIN, COMMIT and
    # ROLLBACK the connection sends on its own (psycopg's _exec_command; a ROLLBACK with
    # nothing open sends nothing). Counted, not timed (the statements and commits are).
    # psycopg's waits are no count of them: BEGIN shares its statement's wait, and a
    # wait may send nothing (an autocommit switch, a ROLLBACK of nothing).
    try:
        import psycopg
        from psycopg._connection_base import BaseConnection
    except ImportError:
        psycopg = None
    if psycopg is not None:
        for owner, name in ((psycopg.Cursor, "execute"), (BaseConnection, "_exec_command")):
            original_send = vars(owner)[name]

            def counted(*args: Any, _original: Any = original_send, **kwargs: Any) -> Any:
                if recorder.active:
                    recorder.round_trips += 1
                return _original(*args, **kwargs)

            setattr(owner, name, functools.wraps(original_send)(counted))
            undo.append(functools.partial(setattr, owner, name, original_send))
    return Instrumentation(recorder, missing, undo)


def _name(func: Any) -> str:
    module = getattr(func, "__module__", "") or ""
    name = getattr(func, "__qualname__", None) or repr(func)
    return f"{module.removeprefix('wattfare_demo.')}.{name}" if module else name


# --- aggregation ------------------------------------------------------------------------------


@dataclass
class Budget:
    calls: int
    round_trips: list[int]
    # path (labels from the root) -> per-call inclusive ns, and per-call own ns
    inclusive: dict[tuple[str, ...], list[int]]
    own: dict[tuple[str, ...], list[int]]
    count: dict[tuple[str, ...], int]
    order: list[tuple[str, ...]]


def aggregate(roots: list[Node]) -> Budget:
    inclusive: dict[tuple[str, ...], list[int]] = defaultdict(list)
    own: dict[tuple[str, ...], list[int]] = defaultdict(list)
    count: dict[tuple[str, ...], int] = defaultdict(int)
    order: list[tuple[str, ...]] = []
    for root in roots:
        seen: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0])

        def walk(node: Node, path: tuple[str, ...], seen: dict = seen) -> None:
            key = (*path, node.label)
            if key not in inclusive and key not in seen:
                order.append(key)
            entry = seen[key]
            entry[0] += node.elapsed
            entry[1] += node.elapsed - sum(c.elapsed for c in node.children)
            entry[2] += 1
            for child in node.children:
                walk(child, key, seen)

        walk(root, ())
        for key, (inc, self_ns, n) in seen.items():
            inclusive[key].append(inc)
            own[key].append(self_ns)
            count[key] += n
    # A step absent from some calls counts 0 there, so means still add up.
    for key in inclusive:
        missing = len(roots) - len(inclusive[key])
        inclusive[key] += [0] * missing
        own[key] += [0] * missing
    trips = [root.round_trips for root in roots]
    return Budget(len(roots), trips, dict(inclusive), dict(own), dict(count), order)


def _us(ns_values: list[int], how: Callable[[list[int]], float]) -> float:
    return how(ns_values) / 1000 if ns_values else 0.0


def budget_lines(budget: Budget, *, min_mean_us: float = 1.0) -> list[str]:
    """A Markdown table: each node's time and own time (medians), and its mean, as a tree.

    Medians, because a shared machine preempts some calls for milliseconds (the means
    show it); means, because they add up: a node's mean is its children's plus its own.
    """
    lines = [
        "| step (indented: inside the step above) | median µs | own, median µs | mean µs | "
        "per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in budget.order:
        inc = budget.inclusive[key]
        mean = _us(inc, statistics.fmean)
        if mean < min_mean_us and len(key) > 1:
            continue
        depth = len(key) - 1
        label = f"**{key[-1]}**" if depth == 0 else key[-1]
        per_call = budget.count[key] / budget.calls
        children = [k for k in budget.order if len(k) == len(key) + 1 and k[:-1] == key]
        own = f"{_us(budget.own[key], statistics.median):,.1f}" if children else ""
        lines.append(
            f"| {'  ' * depth}{'· ' * min(depth, 1)}{label} | {_us(inc, statistics.median):,.1f} | "
            f"{own} | {mean:,.1f} | {per_call:g} |"
        )
    return lines


def flat_totals(budget: Budget) -> dict[str, float]:
    """Mean µs per call by kind: all SQL statements, all commits, all rollbacks."""
    totals: dict[str, float] = defaultdict(float)
    for key in budget.own:
        label = key[-1]
        kind = (
            "SQL statements (driver + database)"
            if label.startswith("SQL ")
            else label
            if label in ("COMMIT (driver)", "ROLLBACK (driver)", "pre-ping (a round trip)")
            else None
        )
        if kind:
            totals[kind] += _us(budget.inclusive[key], statistics.fmean)
    return dict(totals)
