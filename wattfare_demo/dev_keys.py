"""Development defaults that must survive a restart: SECRET_KEY and the demo's test keys.

Generated once into `instance/wattfare-dev.json` (git-ignored), so `flask run` works on a
fresh clone with nothing to configure, and restarts keep the same keys. Never used in
production, where missing settings stop start-up instead.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from .engine.tokens import new_app_id, new_secret_key


def load_or_create(instance_path: str) -> dict[str, Any]:
    path = os.path.join(instance_path, "wattfare-dev.json")
    try:
        with open(path) as fh:
            stored: dict[str, Any] = json.load(fh)
            return stored
    except FileNotFoundError:
        pass
    app_id = new_app_id()
    keys = {
        "SECRET_KEY": secrets.token_hex(32),
        "WATTFARE_PUBLISHABLE_KEY": f"pk_test_{app_id}",
        "WATTFARE_SECRET_KEY": new_secret_key("test", app_id),
    }
    os.makedirs(instance_path, exist_ok=True)
    # O_EXCL: two workers starting at once must not write two different key sets.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as fh:
            written: dict[str, Any] = json.load(fh)
            return written
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh, indent=2)
    return keys
