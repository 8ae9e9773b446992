"""Open the profile store that a settings URL names.

Accepted forms:

* ``memory://``: in-process, lost on exit (tests, backtests, trials);
* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the
  SQLAlchemy convention: what follows ``sqlite:///`` is the path), or a bare
  path ending in ``.db``, ``.sqlite`` or ``.sqlite3``;
* ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS);
* ``redis+cluster://[[user]:password@]host[:port]`` (``rediss+cluster://``), or a
  Redis URL with ``?cluster=true``: a Redis Cluster, any node as the start.
"""

from __future__ import annotations

from pathlib import Path

from risk_engine.errors import ConfigurationError
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.redis import STORE_TIMEOUT_S, RedisStore
from risk_engine.profiles.redis_cluster import RedisClusterStore, is_cluster_url
from risk_engine.profiles.redis_common import redact_url
from risk_engine.profiles.sqlite import SQLiteStore
from risk_engine.profiles.store import ProfileStore

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_EXPECTED = (
    "expected memory://, sqlite:///path.db, a path ending in .db, .sqlite or .sqlite3,"
    " redis://host:port/db (rediss:// for TLS) or redis+cluster://host:port"
)


def open_store(
    url: str,
    *,
    retention_days: float = 180.0,
    timeout_s: float = STORE_TIMEOUT_S,
    prefix: str = "risk-engine",
) -> ProfileStore:
    """The store for ``url``; ConfigurationError naming the value if it is not one of ours.

    ``retention_days`` applies to SQLite and Redis; the memory store keeps no history
    beyond the process, so it ignores it. ``timeout_s`` bounds each Redis socket operation.
    ``prefix``: Redis keys' (deployments sharing one).
    """
    if is_cluster_url(url):
        return RedisClusterStore(
            url, retention_days=retention_days, prefix=prefix, socket_timeout=timeout_s
        )
    scheme, sep, rest = url.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme == "memory" and rest == "":
            return MemoryStore()
        if scheme == "sqlite":
            # After "sqlite://" comes an empty host, then "/" and the path.
            if rest.startswith("/") and len(rest) > 1:
                return SQLiteStore(Path(rest[1:]), retention_days=retention_days)
            raise ConfigurationError(
                f"profile store URL {url!r} is not a SQLite file URL: use"
                " sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        if scheme in ("redis", "rediss"):
            return RedisStore(
                url, retention_days=retention_days, socket_timeout=timeout_s, prefix=prefix
            )
    elif url.lower().endswith(_SQLITE_SUFFIXES):
        return SQLiteStore(Path(url), retention_days=retention_days)
    raise ConfigurationError(f"unsupported profile store URL {redact_url(url)!r}: {_EXPECTED}")
