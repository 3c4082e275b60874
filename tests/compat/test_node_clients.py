"""The openai npm package and the Vercel AI SDK against the engine, run with Node.

tests/compat/clients.test.mjs holds the cases (plain, stream, tools, the 402, a timeout
and its retry that use one request, for each client); this test starts the engine on a
real port in front of the fake model, makes one fresh grant per name the cases use (of
3 requests, or N for a name ending in -N), and runs them with `node --test`. The packages
are pinned in tests/compat/package.json and package-lock.json; scripts/test runs `npm ci`
(and installs Node where it is missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compat.conftest import MODEL

HERE = Path(__file__).parent
CASES = HERE / "clients.test.mjs"


def _grant_names() -> list[str]:
    return sorted(set(re.findall(r'(?:grant|For)\("([a-z0-9-]+)"\)', CASES.read_text())))


@pytest.fixture(scope="session")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("Node is needed for the compatibility tests: scripts/test installs it")
    if not (HERE / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install tests/compat's packages: scripts/test does")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    return found


def test_node_clients(node, api_url, secret_key, make_grant, model) -> None:
    grants = {
        name: make_grant(int(name.rsplit("-", 1)[1]) if name[-1].isdigit() else 3)
        for name in _grant_names()
    }
    assert len(grants) >= 9
    env = {
        **os.environ,
        "WATTFARE_BASE_URL": api_url,
        "WATTFARE_SECRET_KEY": secret_key,
        "WATTFARE_MODEL": MODEL,
        "WATTFARE_GRANTS": json.dumps(grants),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", CASES.name],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"pass (\d+)", result.stdout).group(1) == str(
        len(re.findall(r"^test\(", CASES.read_text(), re.MULTILINE))
    )
