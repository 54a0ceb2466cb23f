"""Where studies and runs are stored: a command-line value, else an environment variable, else
an embedded SQLite file under ``runs/`` in the working directory; and the Optuna storage opened
on such a URL."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studyrunner.errors import StudyrunnerError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "resolve_storage",
    "resolve_tracking_uri",
    "open_storage",
    "StoreError",
    "check_storage",
    "check_tracking",
    "connect_timeout",
    "setup_lock",
    "storage_retry_s",
]


def _store(given: str | None, env: str, filename: str) -> str:
    if given:
        return given
    if os.environ.get(env):
        return os.environ[env]
    Path("runs").mkdir(exist_ok=True)
    return f"sqlite:///{(Path('runs') / filename).resolve()}"


def resolve_storage(url: str | None) -> str:
    """Optuna: ``--storage``, else $STUDYRUNNER_STORAGE, else SQLite runs/optuna.db."""
    return _store(url, "STUDYRUNNER_STORAGE", "optuna.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """MLflow: ``--tracking-uri``, else $MLFLOW_TRACKING_URI, else SQLite runs/mlflow.db."""
    return _store(uri, "MLFLOW_TRACKING_URI", "mlflow.db")


def open_storage(url: str, max_retries: int = 1) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats (a killed worker's trial is failed after the grace period and
    re-queued with its parameters); journal files for ``journal:PATH``; a client of ``studyrunner
    storage-proxy`` for ``grpc://HOST:PORT`` (no heartbeats pass through the proxy)."""
    import warnings

    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("grpc:"):
        from studyrunner.extras import require

        require("grpc", "grpc", "--storage grpc://")
        host, port = _grpc_address(url)
        with warnings.catch_warnings():  # the proxy client is marked experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host=host, port=port)
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}  # a pooled connection cut by a restart is replaced
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"]["connect_args"] = {"timeout": 60}  # wait for the lock instead of failing
    beat = int(os.environ.get("STUDYRUNNER_HEARTBEAT_S", "10"))  # seconds between a running trial's heartbeats
    grace = int(os.environ.get("STUDYRUNNER_GRACE_S", str(3 * beat)))  # silence after which its worker is dead
    with warnings.catch_warnings():  # heartbeats are marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage: optuna.storages.RDBStorage = _retrying_rdb()(
            url,
            heartbeat_interval=beat,
            grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries),
            **kwargs,
        )
        return storage


# --------------------------------------------------------------------------- checks before anything is created

OPTUNA, MLFLOW = "optuna", "mlflow"
_MARKERS = {OPTUNA: {"studies", "trials"}, MLFLOW: {"experiments", "runs"}}  # tables that say whose a database is
_NEUTRAL = {"alembic_version", "sqlite_sequence"}  # tables both tools' schema migrations create
_ROLE = {OPTUNA: "Optuna storage (--storage)", MLFLOW: "MLflow tracking store (--tracking-uri)"}
_SCHEMES = {
    OPTUNA: ("sqlite", "postgresql", "mysql"),
    MLFLOW: ("sqlite", "postgresql", "mysql", "http", "https", "file"),
}
_EXTRAS = {"postgresql": "postgres"}  # the studyrunner extra that installs a backend's drivers
_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(StudyrunnerError):
    """A store URL, path or server that cannot be used; nothing was created or written."""


def connect_timeout() -> float:
    """Seconds a network store or tracking server may take to answer the up-front check."""
    return float(os.environ.get("STUDYRUNNER_CONNECT_TIMEOUT_S", "5"))


def check_storage(url: str, must_exist: bool = False) -> None:
    """Refuse an Optuna storage that cannot work, before anything is created: an unknown scheme,
    a missing driver, a server that does not answer, a path in a missing directory or that is not
    a database, or a database that belongs to MLflow or to something else. ``must_exist``: the
    command only reads (ls, show, export, report), so an absent SQLite file is an error too.
    A ``grpc://HOST:PORT`` proxy must answer one call (it checked its own database when it started)."""
    if url.startswith("journal:"):
        _check_file_path(Path(url.removeprefix("journal:")).expanduser(), url, OPTUNA, must_exist)
        return
    if url.startswith("grpc:"):
        _check_grpc(url)
        return
    _check_database(url, OPTUNA, must_exist)


def _grpc_address(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` (an IPv6 host in brackets) as the host and port a gRPC channel takes."""
    import re

    found = re.fullmatch(r"grpc://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})/?", url)
    if found is None or not 0 < int(found[2]) < 65536:
        raise StoreError(f"{_ROLE[OPTUNA]} {url!r}: give the proxy's address as grpc://HOST:PORT, e.g. grpc://127.0.0.1:13000")
    return found[1], int(found[2])


def _check_grpc(url: str) -> None:
    """Something listens at the address, and it answers a storage proxy's call within the timeout."""
    import socket

    from studyrunner.extras import require

    host, port = _grpc_address(url)
    try:
        socket.create_connection((host.strip("[]"), port), timeout=connect_timeout()).close()
    except OSError:
        raise StoreError(f"nothing is listening at {url}: start the proxy with `studyrunner storage-proxy URL`") from None
    grpc = require("grpc", "grpc", "--storage grpc://")
    with grpc.insecure_channel(f"{host}:{port}") as channel:  # GetAllStudiesRequest has no fields: its message is b""
        call = channel.unary_unary("/optuna.StorageService/GetAllStudies")
        try:
            call(b"", timeout=connect_timeout())
        except grpc.RpcError as exc:
            raise StoreError(
                f"{_ROLE[OPTUNA]} {url!r}: no Optuna storage proxy answers there within {connect_timeout():.0f} s "
                f"({exc.code().name}: {exc.details()}); is it `studyrunner storage-proxy`?"
            ) from None


def check_tracking(uri: str) -> None:
    """Refuse an MLflow tracking URI that cannot work, before a study is created ("none" is off)."""
    if uri.lower() == "none":
        return
    scheme = uri.split(":", 1)[0].lower() if "://" in uri or uri.startswith("file:") else ""
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in ("", "file"):  # MLflow's file store: a folder
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{_ROLE[MLFLOW]} {uri!r}: {folder} is a file, not a folder; give a folder or sqlite:///PATH.db")
        if not folder.exists() and not folder.parent.is_dir():
            raise StoreError(f"{_ROLE[MLFLOW]} {uri!r}: the directory {folder.parent} does not exist; create it first")
    else:
        _check_database(uri, MLFLOW, False)


def _parse(url: str, role: str) -> Any:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    allowed = ", ".join(f"{s}://" for s in _SCHEMES[role]) + (", journal:PATH, grpc://HOST:PORT" if role == OPTUNA else ", none")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(f"{_ROLE[role]} {url!r} is not a database URL; allowed: {allowed}") from None
    if parsed.get_backend_name() not in _SCHEMES[role]:
        raise StoreError(f"{_ROLE[role]} {url!r}: unknown scheme {parsed.get_backend_name()!r}; allowed: {allowed}")
    return parsed


def _check_database(url: str, role: str, must_exist: bool) -> None:
    parsed = _parse(url, role)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return
        path = Path(parsed.database).expanduser()
        _check_file_path(path, url, role, must_exist)
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as fh:
                if fh.read(16) != _SQLITE_MAGIC:
                    raise StoreError(f"{_ROLE[role]} {url!r}: {path} is not an SQLite database; give a new file or one of ours")
            _check_owner(url, role, _sqlite_tables(path))
        return
    _check_driver(parsed, url, role)
    _check_listening(parsed, url, role)
    _check_owner(url, role, _server_tables(url, role))


def _check_file_path(path: Path, url: str, role: str, must_exist: bool) -> None:
    if path.is_dir():
        raise StoreError(f"{_ROLE[role]} {url!r}: {path} is a directory; give a file path in it, e.g. {path / (role + '.db')}")
    if not path.parent.is_dir():
        raise StoreError(f"{_ROLE[role]} {url!r}: the directory {path.parent} does not exist; create it or choose another path")
    if must_exist and not path.exists():
        raise StoreError(f"{_ROLE[role]} {url!r}: {path} does not exist; nothing has run there yet (run a sweep first)")


def _sqlite_tables(path: Path) -> set[str]:
    import sqlite3

    # read-only, so that checking changes nothing; but a process killed mid-write leaves a hot journal
    # that only a writer may roll back (SQLite's own crash recovery): then open it as its next writer would
    hot = Path(f"{path}-journal").is_file()
    mode = "rw" if hot else "ro"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=30)) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot be read as an SQLite database ({exc})") from None


def _check_driver(parsed: Any, url: str, role: str) -> None:
    """The URL's database driver is importable; otherwise name the extra that installs it."""
    from sqlalchemy.exc import NoSuchModuleError

    backend = parsed.get_backend_name()
    extra = f"pip install 'studyrunner[{_EXTRAS[backend]}]'" if backend in _EXTRAS else "install its driver"
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StoreError(f"{_ROLE[role]} {url!r}: SQLAlchemy knows no driver {parsed.drivername!r}") from None
    except ImportError as exc:
        raise StoreError(
            f"{_ROLE[role]} {url!r}: the {parsed.drivername} driver is not installed ({exc.name or exc}); {extra}"
        ) from None


def _check_listening(parsed: Any, url: str, role: str) -> None:
    import socket

    ports = {"postgresql": 5432, "mysql": 3306}
    host, port = parsed.host or "localhost", parsed.port or ports.get(parsed.get_backend_name(), 0)
    if parsed.host is None and parsed.query.get("host"):  # a Unix socket folder
        return
    try:
        socket.create_connection((host, port), timeout=connect_timeout()).close()
    except OSError as exc:
        raise StoreError(
            f"{_ROLE[role]} {parsed.render_as_string(hide_password=True)!r}: no server answers at {host}:{port} "
            f"within {connect_timeout():.0f} s ({exc.strerror or exc}); start it or check host and port"
        ) from None


def _server_tables(url: str, role: str) -> set[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": max(1, int(connect_timeout()))}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        safe = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise StoreError(f"{_ROLE[role]} {safe!r}: cannot connect ({first})") from None
    finally:
        engine.dispose()


def _check_owner(url: str, role: str, tables: set[str]) -> None:
    """Never write into a database that belongs to the other tool or to something else."""
    tables = tables - _NEUTRAL
    if not tables or _MARKERS[role] <= tables:
        return
    other = MLFLOW if role == OPTUNA else OPTUNA
    if _MARKERS[other] <= tables:
        raise StoreError(
            f"{_ROLE[role]} {url!r} is {'an Optuna' if other == OPTUNA else 'an MLflow'} database "
            f"(it holds {', '.join(sorted(_MARKERS[other]))}); the two stores must be separate files or databases: "
            f"did you swap --storage and --tracking-uri?"
        )
    shown = ", ".join(sorted(tables)[:6])
    raise StoreError(
        f"{_ROLE[role]} {url!r} holds tables of another application ({shown}); studyrunner writes only into "
        "an empty database or one it created"
    )


def _check_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=connect_timeout()):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answers (a proxy or an older server without /health)
            return
        raise StoreError(f"{_ROLE[MLFLOW]} {uri!r}: the server answers HTTP {exc.code}; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreError(
            f"{_ROLE[MLFLOW]} {uri!r}: no MLflow server answers within {connect_timeout():.0f} s ({reason}); "
            "start it (mlflow server) or use --tracking-uri none"
        ) from None


@contextlib.contextmanager
def setup_lock() -> Iterator[None]:
    """Serialise store setup (schema creation and migration, the study, the parent run) between
    the processes of this machine, so that several started at once on fresh stores do not race."""
    import fcntl
    import tempfile

    path = Path(tempfile.gettempdir()) / f"studyrunner-setup-{os.getuid()}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- a storage that outlives a server restart

_NOT_RETRIED = {"get_current_version", "get_head_version", "get_all_versions", "upgrade", "remove_session"}
# what Optuna's cache layer (_CachedStorage, in front of every RDBStorage) calls besides the public methods
_CACHE_CALLS = {"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids"}


def storage_retry_s() -> float:
    """Seconds a storage call keeps retrying while its database server is unreachable
    ($STUDYRUNNER_STORAGE_RETRY_S, default 120): a restart or a network blip costs no trial."""
    return float(os.environ.get("STUDYRUNNER_STORAGE_RETRY_S", "120"))


def _lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` (or what Optuna wrapped in it) says the database connection was lost or
    refused, as opposed to a statement the database rejected."""
    import sqlalchemy.exc as sa

    seen: BaseException | None = exc
    for _ in range(4):  # Optuna's StorageInternalError wraps SQLAlchemy's error, which wraps the driver's
        if seen is None:
            return False
        if isinstance(seen, sa.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retried(method: Any) -> Any:
    import functools
    import time

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline, pause = time.monotonic() + storage_retry_s(), 0.25
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not _lost_connection(exc) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)  # the pool's pre-ping replaces the dead connection on the next checkout
                pause = min(pause * 2, 5.0)

    return call


@cache
def _retrying_rdb() -> type:
    """Optuna's RDBStorage whose every storage call (heartbeats too: Optuna's heartbeat thread
    stops at its first error) is retried while the database server is unreachable. Without it, a
    PostgreSQL restart fails the running trial with Optuna's "An exception is raised during the
    commit ... e.g. exceeding max length"."""
    import inspect

    import optuna

    members = inspect.getmembers(optuna.storages.RDBStorage, inspect.isfunction)
    names = [n for n, _ in members if not n.startswith("_") or n in _CACHE_CALLS]
    body = {n: _retried(getattr(optuna.storages.RDBStorage, n)) for n in names if n not in _NOT_RETRIED}
    return type("RetryingRDBStorage", (optuna.storages.RDBStorage,), body)
