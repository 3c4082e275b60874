"""gunicorn settings for the Procfile's `web` process (docs/deploy.md).

The Procfile itself names what the platform decides: the port ($PORT), the number of
worker processes ($WEB_CONCURRENCY, default 2) and WATTFARE_ENV (production unless set).
Anything here can be overridden without a code change through gunicorn's own
GUNICORN_CMD_ARGS, e.g. `GUNICORN_CMD_ARGS="--threads 8"`.
"""

import os

# Threads, not one request per process. A streamed chat completion lasts as long as the
# model takes to write it, often longer than any sensible worker timeout. A sync worker
# would be busy for the whole stream (one slow visitor blocks every request queued
# behind it) and would be killed by `timeout` mid-stream. A gthread worker serves
# `threads` requests at once, and its main loop keeps telling the master it is alive
# while threads stream, so `timeout` only fires for a process that is really stuck.
# Keep threads <= DB_POOL_SIZE + 2 (the pool's overflow): each busy thread may hold one
# database connection.
worker_class = "gthread"
threads = 4

# A worker whose main loop has not checked in for this long is killed and replaced.
timeout = 30
# On SIGTERM (deploy, restart, scale down) in-flight requests get this long to finish.
# Heroku kills a dyno 30 s after SIGTERM; stay under that so workers exit on their own.
graceful_timeout = 25
# Idle keep-alive connections from the platform's proxy are kept a little longer than
# gunicorn's 2 s default; in a gthread worker they wait in the poller, not in a thread.
keepalive = 5

# Logs. gunicorn's access log is off on purpose: the app writes one line per request to
# stdout itself (wattfare_demo/request_log.py), with the grant's outcome, and without the
# query string or referrer that gunicorn's format would print (a token must never reach
# a log). gunicorn's own messages (boot, worker restarts, errors) go to stderr.
accesslog = None
errorlog = "-"
loglevel = "info"

# No runtime control socket: nothing here uses `gunicornc`, and its default path in
# $HOME would be shared by every gunicorn on the machine (the tests start several).
control_socket_disable = True

# The heartbeat file lives in memory where there is a /dev/shm (Linux containers), so a
# slow or full disk cannot make healthy workers look dead. gunicorn makes it with
# mkstemp (private, unique name) and unlinks it at once.
_SHM = "/dev/shm"  # noqa: S108
if os.path.isdir(_SHM):
    worker_tmp_dir = _SHM


def post_worker_init(worker) -> None:
    """Each worker sweeps on a background thread (wattfare_demo/engine/sweep.py): stale
    holds are released and what was kept to replay answers is deleted within the hour,
    with no process or scheduler to set up. Several workers and hosts sweeping is safe."""
    from wattfare_demo.engine.sweep import start_background

    start_background(worker.wsgi)
