"""The real app plus the bench's baselines, for gunicorn in the bench scripts (never deployed).

`gunicorn bench.bare_app:app` serves exactly what `gunicorn app:app` serves. With
WATTFARE_BENCH_BARE=1 it also mounts the bench-only baselines of bench/baselines.py
(`/bench/bare`, `/bench/bare-model`, `/bench/bare-stream`), so the product code has no
benchmark switch in it at all.
"""

from __future__ import annotations

import os

from bench.baselines import bare
from wattfare_demo import create_app

app = create_app()
if os.environ.get("WATTFARE_BENCH_BARE") == "1":
    app.register_blueprint(bare)
