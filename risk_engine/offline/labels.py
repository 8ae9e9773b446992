"""Labels for training and evaluation, from the simulator or from feedback.

Accepted lines (JSON Lines): the simulator's ``{"event_id", "is_attack", "attack_type",
"scenario", "context"}`` (``context``, optional, says where a legitimate event
happened: home, cellular, vpn, corporate, ...), the service's feedback ``{"event_id",
"label": "confirmed_fraud" | "confirmed_legit"}``, and the backtest outcomes
``{"event_id", "step_up": "failed"}`` (a failed step-up counts as an attack label, a
passed one as legitimate).

An attack event whose ``scenario`` is ``owner_routine`` is one the simulator made
the same as the victim's own (malware on the victim's own device, at home, at the
victim's usual hour, logging in or reading the balance): nothing observable tells
it from the owner, so the best any detector can do is to rank it as the owner's
own events, at random among legitimate ones. Evaluation reports their share and
the figures without them beside the figures on every attack.

``LabelledRun`` is a log joined with its labels and decisions, what evaluation,
calibration and the per-context figures all read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from risk_engine.errors import InvalidEventError
from risk_engine.offline.logs import LogReport, expand_paths, raw_lines, read_records, required_text
from risk_engine.offline.remote import LogPath

# A user with at least this many earlier events in the log is "established".
ESTABLISHED_MIN_PRIOR = 10
# The scenario of an attack event that is the same as the victim's own routine.
OWNER_ROUTINE = "owner_routine"


@dataclass(frozen=True)
class Label:
    is_attack: bool
    attack_type: str | None = None
    scenario: str | None = None
    context: str | None = None


def _label_of(record: dict[str, object]) -> Label | None:
    if isinstance(record.get("is_attack"), bool):
        attack_type = record.get("attack_type")
        scenario = record.get("scenario")
        context = record.get("context")
        return Label(
            bool(record["is_attack"]),
            attack_type if isinstance(attack_type, str) else None,
            scenario if isinstance(scenario, str) else None,
            context if isinstance(context, str) else None,
        )
    label = record.get("label")
    if label in ("confirmed_fraud", "confirmed_legit"):
        return Label(
            label == "confirmed_fraud", "confirmed_fraud" if label == "confirmed_fraud" else None
        )
    if record.get("step_up") in ("passed", "failed"):
        return Label(
            record["step_up"] == "failed",
            "failed_step_up" if record["step_up"] == "failed" else None,
        )
    return None


def parse_label(record: dict[str, Any]) -> tuple[str, Label]:
    """(event_id, Label) of one label line; InvalidEventError naming the field otherwise."""
    event_id = required_text(record, "event_id")
    label = _label_of(record)
    if label is None:
        raise InvalidEventError("label: no is_attack, label or step_up field", field="label")
    return event_id, label


def load_labels(paths: list[Path], report: LogReport) -> dict[str, Label]:
    """event_id -> Label from every log; later lines override earlier ones.

    Bad lines are reported (file, line, field), counted and skipped, as for events.
    """
    return dict(read_records(paths, parse_label, report, "label file"))


def load_attack_labels(paths: list[Path], report: LogReport) -> tuple[dict[str, Label], int]:
    """The attack labels of ``load_labels``, and how many labels were read in all.

    What training needs (an event is trusted unless labelled an attack), read in one
    pass that keeps the attacks only: a label per event would hold the log in memory.
    """
    attacks: dict[str, Label] = {}
    count = 0
    for event_id, label in read_records(paths, parse_label, report, "label file"):
        count += 1
        if label.is_attack:
            attacks[event_id] = label
        else:
            attacks.pop(event_id, None)  # a later line overrides an earlier one
    return attacks, count


def audit_labels(paths: Sequence[LogPath | str]) -> dict[str, Label]:
    """The labels an audit log holds: failed and passed step-ups, and feedback.

    A plain event log has none of these records and gives no labels; a decision
    record is an event, not a label. Later records override earlier ones. A torn
    line is not reported here: reading the same log as events reports it.
    """
    labels: dict[str, Label] = {}
    for path in expand_paths(paths):
        if path.name.endswith(".parquet"):
            continue  # the service writes its audit log as JSON Lines
        for raw in raw_lines(path):
            if b'"prev_hash"' not in raw or (
                b'"challenge_result"' not in raw and b'"feedback"' not in raw
            ):
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            event_id = record.get("event_id") if isinstance(record, dict) else None
            if not isinstance(event_id, str):
                continue
            if record.get("record") == "challenge_result":
                outcome = record.get("outcome")
                if outcome in ("passed", "failed"):
                    labels[event_id] = Label(
                        outcome == "failed", "failed_step_up" if outcome == "failed" else None
                    )
            elif record.get("record") == "feedback":
                label = _label_of(record)
                if label is not None:
                    labels[event_id] = label
    return labels


@dataclass
class LabelledRun:
    """Per event in time order: truth, the engine's decision, and the baseline's score."""

    event_ids: list[str]
    actions: list[str]
    attack: NDArray[np.bool_]
    attack_types: NDArray[np.str_]  # "" for legitimate events
    prior_events: NDArray[np.int64]  # events of the same user earlier in the log
    score: NDArray[np.float64]
    outcome: NDArray[np.int8]  # OUTCOME_RANK of the decision
    reason_codes: list[tuple[str, ...]]
    baseline: NDArray[np.float64] | None = None
    # Attack events the same as the victim's own routine (``OWNER_ROUTINE``).
    owner_routine: NDArray[np.bool_] | None = None
    window: tuple[float, float] = (math.nan, math.nan)
    unlabelled: int = 0
    undecided: int = 0
    # What was read to build it (the events and the decisions): bad lines, counted.
    report: LogReport = field(default_factory=LogReport)

    @property
    def established(self) -> NDArray[np.bool_]:
        return self.prior_events >= ESTABLISHED_MIN_PRIOR
