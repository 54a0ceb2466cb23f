"""``studyrunner storage-proxy``: Optuna's gRPC storage proxy in front of a study database.

Every worker on a database URL holds its own connection pool, and PostgreSQL allows 100
connections by default, so a few hundred workers cannot all connect. Workers given
``--storage grpc://HOST:PORT`` reach the database through this one process instead, which holds a
small pool of its own. The proxy speaks plain gRPC: no TLS and no authentication, so it binds
loopback unless told otherwise and belongs inside a private network. Heartbeats do not pass
through it: a worker that is killed outright leaves its trial RUNNING (see the README's
"Scaling out").
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna

from studyrunner.errors import StudyrunnerError, Terminated, note_signal
from studyrunner.extras import require
from studyrunner.stores import check_storage

__all__ = ["PROXY_THREADS", "serve_proxy", "proxy_backend"]

# requests the proxy serves at once, each on one database connection: the database sees at most
# this many connections however many workers there are (requests beyond wait in gRPC's queue)
PROXY_THREADS = 8


def proxy_backend(url: str, threads: int = PROXY_THREADS) -> optuna.storages.BaseStorage:
    """The proxy's own storage on ``url``: one pooled connection per handler thread, none beyond,
    and Optuna's in-process trial cache in front (as Optuna's proxy documentation advises)."""
    engine: dict[str, Any] = {"pool_size": threads, "max_overflow": 0, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # wait for the lock instead of failing
    elif url.startswith("postgresql"):  # pg_stat_activity shows whose connections these are
        engine["connect_args"] = {"application_name": "studyrunner storage-proxy"}
    return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs=engine))


def _stop(signum: int, frame: object) -> None:
    note_signal(signum)
    raise Terminated()


def serve_proxy(url: str, host: str = "127.0.0.1", port: int = 13000, say: Callable[[str], None] = print) -> None:
    """Serve the study storage ``url`` at ``host:port`` until Ctrl-C or SIGTERM. The database is
    checked first; one line says where the proxy listens and that it has no TLS or authentication."""
    if url.startswith(("grpc:", "journal:")):
        raise StudyrunnerError(
            f"storage-proxy {url}: the proxy serves a database URL (postgresql://, mysql:// or sqlite:///PATH), "
            "not a journal file or another proxy"
        )
    require("grpc", "grpc", "studyrunner storage-proxy")
    check_storage(url)
    _check_port(host, port)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "Server started" lines repeat ours
    backend = proxy_backend(url)
    pool = ThreadPoolExecutor(max_workers=PROXY_THREADS, thread_name_prefix="storage-proxy")
    previous = signal.signal(signal.SIGTERM, _stop)
    say(
        f"storage proxy for {_safe(url)} listening at grpc://{host}:{port} ({PROXY_THREADS} database connections at most); "
        "it has no TLS and no authentication: keep it inside a private network. Ctrl-C stops it"
    )
    try:
        with warnings.catch_warnings():  # the proxy is marked experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(backend, host=host, port=port, thread_pool=pool)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as Terminated: both end the proxy normally
        say("storage proxy stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=False, cancel_futures=True)


def _check_port(host: str, port: int) -> None:
    """The address is free: gRPC itself would only log a failed bind and then serve nothing."""
    import socket

    if not 0 < port < 65536:
        raise StudyrunnerError(f"--port {port}: give a port from 1 to 65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener refuses it, a closed one's TIME_WAIT not
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        raise StudyrunnerError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def _safe(url: str) -> str:
    """The URL with its password hidden, for the line the proxy prints."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
