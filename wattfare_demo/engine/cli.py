"""`flask wattfare …`: manage apps, their origins and budgets from the command line."""

from __future__ import annotations

import time

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select

from ..extensions import db
from ..origins import normalise_origin
from . import grants, sweep
from .apps import (
    add_origin,
    budget_text,
    create_app_record,
    parse_daily_budget,
    remove_origin,
    set_daily_budget,
)
from .models import App

# An AppGroup runs each command inside the app context: under `flask`, and under
# `app.test_cli_runner()` too, which (unlike the `flask` command) does not push one itself.
group = AppGroup("wattfare", help="Manage the embedded Wattfare engine's apps.")


def _origin(value: str) -> str:
    origin = normalise_origin(value)
    if origin is None:
        raise click.BadParameter(f"{value!r} is not an origin like https://example.com")
    return origin


def _app(app_id: str) -> App:
    app = db.session.get(App, app_id)
    if app is None:
        raise click.ClickException(f"No app {app_id!r}; `flask wattfare list-apps` lists them.")
    return app


@group.command("create-app")
@click.option("--name", required=True, help="Shown to visitors in the consent popup.")
@click.option("--mode", type=click.Choice(["test", "live"]), default="test", show_default=True)
@click.option("--origin", "origins", multiple=True, help="An allowed origin (repeatable).")
@click.option("--auto-approve", is_flag=True, help="Test keys only: the popup approves itself.")
def create_app_command(name: str, mode: str, origins: tuple[str, ...], auto_approve: bool) -> None:
    """Create an app and print its keys (the secret key is shown only this once)."""
    if auto_approve and mode != "test":
        raise click.BadParameter(
            "--auto-approve is for test apps only", param_hint="--auto-approve"
        )
    created = create_app_record(
        name,
        mode,
        [_origin(o) for o in origins],
        current_app.config["SECRET_KEY"],
        auto_approve=auto_approve,
    )
    click.echo(f"Created app {created.app.id} ({mode}).")
    click.echo(f"WATTFARE_PUBLISHABLE_KEY={created.app.publishable_key}")
    click.echo(f"WATTFARE_SECRET_KEY={created.secret_key}")
    click.echo("Keep the secret key now: only its hash is stored.")


@group.command("list-apps")
def list_apps_command() -> None:
    """List apps with their publishable keys and allowed origins."""
    apps = db.session.scalars(select(App).order_by(App.created_at)).all()
    if not apps:
        click.echo("No apps yet: `flask wattfare create-app --name …`.")
    for app in apps:
        auto = ", auto-approve" if app.auto_approve else ""
        click.echo(
            f"{app.id}  {app.name!r}  {app.publishable_key}{auto}, "
            f"{budget_text(app.daily_budget_pusd)}"
        )
        for origin in app.origin_list:
            click.echo(f"    {origin}")


@group.command("add-origin")
@click.argument("app_id")
@click.argument("origin")
def add_origin_command(app_id: str, origin: str) -> None:
    """Allow ORIGIN to ask for grants for APP_ID."""
    origin = _origin(origin)
    added = add_origin(_app(app_id), origin)
    click.echo(f"Added {origin}." if added else f"{origin} was already allowed.")


@group.command("remove-origin")
@click.argument("app_id")
@click.argument("origin")
def remove_origin_command(app_id: str, origin: str) -> None:
    """Stop ORIGIN from asking for grants for APP_ID."""
    origin = _origin(origin)
    removed = remove_origin(_app(app_id), origin)
    click.echo(f"Removed {origin}." if removed else f"{origin} was not allowed.")


@group.command("set-budget")
@click.argument("app_id")
@click.argument("usd")
def set_budget_command(app_id: str, usd: str) -> None:
    """Set the most APP_ID's calls may cost over a rolling day: USD dollars, or off.

    Calls past it get 402 grant_invalid (reason app_budget) until the day's spending ages
    out. The demo app's own budget comes from WATTFARE_DAILY_BUDGET_USD when that is set,
    at every start.
    """
    try:
        pusd = parse_daily_budget(usd)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="USD") from None
    app = _app(app_id)
    set_daily_budget(app, pusd)
    spent, held = grants.budget_window_spend(app.id)
    click.echo(f"{app.id} {app.name!r}: {budget_text(pusd)}.")
    if pusd is not None:
        click.echo(
            f"Spent in the last 24 hours: {budget_text(spent).removesuffix(' a day')}"
            f" (and {budget_text(held).removesuffix(' a day')} held by calls in flight)."
        )


@group.command("sweep")
@click.option(
    "--every",
    type=click.FloatRange(min=1),
    default=None,
    help="Sweep again every this many seconds, until stopped (a process of its own).",
)
def sweep_command(every: float | None) -> None:
    """Run the sweep's steps (engine/sweep.py): release holds of calls that never
    finished, forget what was kept to replay answers once it is 30 minutes old, …

    The Procfile's gunicorn workers already sweep every WATTFARE_SWEEP_INTERVAL seconds;
    this is for a scheduler, by hand, or (with --every) a process of its own.
    """
    while True:
        done = sweep.sweep()
        if done is None:
            click.echo("Another sweep is running; skipped.")
        for step, count in done or ():
            click.echo(step.says.format(count).capitalize() + ".")
        db.session.remove()
        if every is None:
            return
        time.sleep(every)


def register(app: Flask) -> None:
    app.cli.add_command(group)
