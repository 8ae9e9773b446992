"""The bounded sample of replayed feature rows that training fits on.

A log may hold more events than a host can keep as feature rows, and the model
needs few of them: the isolation forest sees ``max_samples`` rows a tree, the
calibrations an empirical distribution, the supervised model every attack and
enough legitimate rows. So training keeps, wherever the rows are computed:

- every row labelled as an attack;
- of the others, the ``capacity`` rows of smallest priority, a keyed hash of the
  event (id, time, user) seeded by the model's seed: a uniform sample without
  replacement (bottom-k), the same set whatever the order the rows come in.

A sample of each user partition, merged, is the sample of the whole log, so the
one-process and the distributed replay fit the same model. Counts (events,
attacks, users, time window) cover every event, not only those kept.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from risk_engine.assembly import build_engine
from risk_engine.events import Event
from risk_engine.features.registry import FEATURE_NAMES
from risk_engine.geo import GeoLocator
from risk_engine.offline.labels import Label
from risk_engine.offline.logs import LogReport, merged_events
from risk_engine.offline.remote import LogPath
from risk_engine.offline.replay import FeatureTable

# Legitimate rows kept by default: the forest's 200 trees of 256 rows see 51,200 at most.
SAMPLE_ROWS = 1 << 17

# Events between two progress updates of the one-process replay.
TICK_EVERY = 2000

_HISTORY = FEATURE_NAMES.index("history_log_events")

# (priority, timestamp, event id, user id, action, features as float64 bytes): a total
# order on rows, so ties in priority are broken by content, never by arrival. Bytes
# take a quarter of the memory of a tuple of floats.
Kept = tuple[int, float, str, str, str, bytes]
# (timestamp, event id, user id, action, attack type, features as float64 bytes)
AttackRow = tuple[float, str, str, str, str | None, bytes]


def priority(event: Event, seed: int) -> int:
    """The event's place in the sample: a keyed hash, uniform over 64 bits."""
    text = f"{event.event_id}\x00{event.epoch!r}\x00{event.user_id}".encode()
    key = seed.to_bytes(8, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(text, digest_size=8, key=key).digest(), "little")


@dataclass
class FeatureSample:
    """Rows kept from a stream of replayed events, and counts of the whole stream."""

    capacity: int
    seed: int
    events: int = 0
    attacks: int = 0
    users: int = 0
    first: float = math.inf
    last: float = -math.inf
    legit: list[Kept] = field(default_factory=list)
    attack_rows: list[AttackRow] = field(default_factory=list)
    # Rows of priority above this cannot be among the ``capacity`` smallest.
    _bound: int = 1 << 64

    def add(self, event: Event, values: list[float], label: Label | None) -> None:
        """Count one replayed event and keep its row if it is in the sample."""
        self.events += 1
        self.first = min(self.first, event.epoch)
        self.last = max(self.last, event.epoch)
        if label is not None and label.is_attack:
            self.attacks += 1
            row = array("d", values).tobytes()
            self.attack_rows.append(
                (event.epoch, event.event_id, event.user_id, event.action, label.attack_type, row)
            )
            return
        rank = priority(event, self.seed)
        if rank > self._bound:
            return
        row = array("d", values).tobytes()
        self.legit.append((rank, event.epoch, event.event_id, event.user_id, event.action, row))
        if len(self.legit) >= 2 * self.capacity:
            self._cut()

    def _cut(self) -> None:
        self.legit.sort()
        del self.legit[self.capacity :]
        if len(self.legit) == self.capacity:
            self._bound = self.legit[-1][0]

    def merge(self, other: FeatureSample) -> None:
        """Join the sample of a disjoint set of users (another partition)."""
        self.events += other.events
        self.attacks += other.attacks
        self.users += other.users
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.attack_rows.extend(other.attack_rows)
        self.legit.extend(other.legit)
        self._cut()

    def finished(self) -> FeatureSample:
        """The sample cut to its capacity (what a partition sends to the client)."""
        self._cut()
        return self

    def table(self, report: LogReport) -> FeatureTable:
        """The kept rows in time order (ties by content), as the table training fits on."""
        self._cut()
        rows: list[tuple[Any, ...]] = [
            (ts, rank, event_id, user, action, None, False, values)
            for rank, ts, event_id, user, action, values in self.legit
        ]
        rows += [
            (ts, -1, event_id, user, action, kind, True, values)
            for ts, event_id, user, action, kind, values in self.attack_rows
        ]
        rows.sort(key=lambda r: (r[0], r[6], r[1], r[2], r[3], r[4], r[7]))
        X = np.frombuffer(b"".join(r[7] for r in rows), dtype=np.float64)
        X = X.reshape(-1, len(FEATURE_NAMES)).copy()
        return FeatureTable(
            X=X,
            event_ids=[r[2] for r in rows],
            timestamps=np.asarray([r[0] for r in rows], dtype=np.float64),
            user_ids=[r[3] for r in rows],
            actions=[r[4] for r in rows],
            prior_events=np.rint(np.expm1(X[:, _HISTORY])).astype(np.int64),
            attack=np.asarray([r[6] for r in rows], dtype=bool),
            attack_types=[r[5] for r in rows],
            report=report,
        )


def replay_sample(
    paths: Sequence[LogPath | str],
    labels: dict[str, Label],
    *,
    geo: GeoLocator,
    keys: Mapping[str, str] | None,
    capacity: int,
    seed: int,
    on_tick: Callable[[int], None] | None = None,
) -> tuple[LogReport, FeatureSample]:
    """Training's replay in this process (``replay``'s loop), kept as a bounded sample."""
    report = LogReport(keys=keys)
    engine = build_engine(geo=geo)
    sample = FeatureSample(capacity, seed)
    users: set[str] = set()
    for event in merged_events(paths, report):
        label = labels.get(event.event_id)
        values, _ = engine.replay(event, trusted=not (label is not None and label.is_attack))
        sample.add(event, values, label)
        users.add(event.user_id)
        if on_tick is not None and sample.events % TICK_EVERY == 0:
            on_tick(sample.events)
    sample.users = len(users)
    return report, sample.finished()
