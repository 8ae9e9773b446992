"""The offline inputs (``logs.expand_paths``: files, directories, globs) cut into pieces.

The inputs are cut into pieces that can be read independently: a plain JSON Lines file
into byte ranges that start at a line start, a gzip or Parquet file whole. Every
piece is read by ``logs.read_piece``, the one reader of the commands, so bad
lines are reported, counted and skipped the same way everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from risk_engine.offline.remote import LogPath

# A plain JSON Lines file is cut into ranges of about this size.
PIECE_BYTES = 32 << 20


@dataclass(frozen=True)
class Piece:
    """One independently readable part of the inputs, numbered in input order."""

    index: int
    path: str
    file_index: int
    start: int
    # None: the whole file (gzip and Parquet cannot be entered in the middle).
    end: int | None


def byte_ranges(path: LogPath, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive byte ranges of the file, each starting at a line start."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as handle:
        for k in range(1, parts):
            target = max(size * k // parts, cuts[-1], 1)
            handle.seek(target - 1)
            handle.readline()  # to the end of the line holding byte target - 1
            cuts.append(min(handle.tell(), size))
    cuts.append(size)
    return list(itertools.pairwise(cuts))


def plan_pieces(files: Sequence[LogPath], piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    """The pieces of the inputs, in input order (file after file, range after range)."""
    pieces: list[Piece] = []
    for file_index, path in enumerate(files):
        if path.name.endswith((".gz", ".parquet")):
            pieces.append(Piece(len(pieces), str(path), file_index, 0, None))
            continue
        parts = max(1, -(-path.stat().st_size // piece_bytes))
        for start, end in byte_ranges(path, parts):
            pieces.append(Piece(len(pieces), str(path), file_index, start, end))
    return pieces


def total_bytes(files: Sequence[LogPath]) -> int:
    return sum(path.stat().st_size for path in files)
