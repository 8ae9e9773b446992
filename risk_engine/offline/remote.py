"""Logs named by a URL, read through fsspec: the file layer Dask itself reads with.

``risk-engine backtest https://host/logs/events.jsonl`` (or ``s3://bucket/logs/``,
``gs://bucket/2026-*/*.jsonl.gz``: any scheme with an fsspec implementation
installed; ``http(s)://`` comes with the project, ``s3://`` needs ``s3fs``,
``gs://`` ``gcsfs``, ``abfs://`` ``adlfs``) reads the log where it lies. The
client looks at sizes and line starts only; on a Dask cluster each worker reads
its own pieces of the log (byte ranges of a plain JSON Lines file), so the
workers need the same access to the URL as the client (credentials in their
environment, as fsspec reads them). A URL names a file, a "directory" (its logs,
by name) or a glob, as a local path does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import fsspec

from risk_engine.errors import ConfigurationError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# What fsspec and the stores behind it raise for a URL that cannot be read: a missing
# implementation (ImportError: "Install s3fs to access S3"), a refused or missing
# file (OSError, of which aiohttp's connection errors are too), a malformed URL.
_READ_ERRORS = (OSError, ValueError, ImportError, RuntimeError)


def is_url(text: str) -> bool:
    """True for ``scheme://...``: a log to read through fsspec rather than a local path."""
    return _SCHEME.match(text) is not None


@dataclass(frozen=True)
class RemoteStat:
    st_size: int


@dataclass(frozen=True)
class RemoteFile:
    """One log file named by a URL: the part of ``Path``'s interface the readers use."""

    url: str

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url

    def open(self, mode: str = "rb", *, compression: str | None = None) -> IO[bytes]:
        """The file as a seekable binary stream (closing it closes every layer)."""
        if mode != "rb":
            raise ValueError(f"remote logs are read only, not opened with {mode!r}")
        try:
            opened: Any = fsspec.open(self.url, "rb", compression=compression).open()
        except _READ_ERRORS as exc:
            raise ConfigurationError(f"event log {self.url} cannot be read: {exc}") from exc
        return cast(IO[bytes], opened)

    def stat(self) -> RemoteStat:
        fs, path = _filesystem(self.url)
        try:
            return RemoteStat(int(fs.size(path)))
        except _READ_ERRORS as exc:
            raise ConfigurationError(f"event log {self.url} cannot be read: {exc}") from exc


LogPath = Path | RemoteFile


def log_path(text: str | LogPath) -> LogPath:
    """A local path, or the remote file a URL names."""
    if isinstance(text, Path | RemoteFile):
        return text
    return RemoteFile(text) if is_url(text) else Path(text)


def log_key(path: LogPath | str) -> str:
    """What tells two logs apart: a URL as given, a local path resolved."""
    located = log_path(path)
    return located.url if isinstance(located, RemoteFile) else str(located.resolve())


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        return cast(tuple[Any, str], fsspec.core.url_to_fs(url))
    except _READ_ERRORS as exc:
        raise ConfigurationError(f"{url} cannot be read: {exc}") from exc


def expand_url(url: str, is_log: Callable[[str], bool], what: str) -> list[RemoteFile]:
    """The logs a URL names: the file, a glob's, or a directory's, sorted by name.

    ``is_log`` says whether a name is a log's (``logs.LOG_SUFFIXES``). A URL with a
    log's name is that file, never listed: over http(s) listing a URL means reading
    it.
    """
    fs, root = _filesystem(url)
    try:
        if any(char in root for char in "*?["):
            found: list[str] = []
            for match in sorted(fs.glob(root)):
                if is_log(match):
                    found.append(match)
                elif fs.isdir(match):
                    found.extend(p for p in fs.find(match) if is_log(p))
            if not found:
                raise ConfigurationError(f"no {what}s match {url}")
        elif is_log(root):
            if not fs.exists(root):
                raise ConfigurationError(f"{what} not found: {url}")
            return [RemoteFile(url)]
        else:
            found = [p for p in fs.find(root) if is_log(p)]
            if not found:
                raise ConfigurationError(f"{url} holds no {what}s (or is not there)")
    except _READ_ERRORS as exc:
        raise ConfigurationError(f"{what} {url} cannot be read: {exc}") from exc
    return [RemoteFile(fs.unstrip_protocol(p)) for p in sorted(set(found))]
