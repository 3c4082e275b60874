"""Browser tests: pytest-playwright on a system Chromium when there is one.

`scripts/test` sets WATTFARE_CHROMIUM to the system browser (Debian's /usr/bin/chromium
here); without it Playwright's own Chromium is used, as on a laptop after
`playwright install chromium`. The app runs on a live server on an ephemeral port.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

# Chromium's background services try to reach Google; this machine's network refuses
# them, so switch them off (and the sandbox, which needs a non-root user).
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
]


def system_chromium() -> str | None:
    configured = os.environ.get("WATTFARE_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    args = dict(browser_type_launch_args)
    executable = system_chromium()
    if executable:
        args["executable_path"] = executable
    extra = list(CHROMIUM_ARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        extra.append("--no-sandbox")
    args["args"] = [*args.get("args", []), *extra]
    return args


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Browser tests exercise the UI; the database matrix is covered by the API tests."""
    return request.param
