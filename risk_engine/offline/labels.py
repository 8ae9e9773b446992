"""Labels for training and evaluation, from the simulator or from feedback.

Accepted lines (JSON Lines): the simulator's ``{"event_id", "is_attack", "attack_type",
"scenario", "context"}`` (``context``, optional, says where a legitimate event
happened: home, cellular, vpn, corporate, ...), the service's feedback ``{"event_id",
"label": "confirmed_fraud" | "confirmed_legit"}``, and the backtest outcomes
``{"event_id", "step_up": "failed"}`` (a failed step-up counts as an attack label, a
passed one as legitimate).

``LabelledRun`` is a log joined with its labels and decisions, what evaluation,
calibration and the per-context figures all read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from numpy.typing import NDArray

from risk_engine.errors import InvalidEventError

# A user with at least this many earlier events in the log is "established".
ESTABLISHED_MIN_PRIOR = 10


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


def load_labels(paths: list[Path]) -> dict[str, Label]:
    """event_id -> Label from every file; later files override earlier ones."""
    labels: dict[str, Label] = {}
    for path in paths:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise InvalidEventError(
                        f"{path}:{number}: not valid JSON ({exc})", field="label", line=number
                    ) from None
                if not isinstance(record, dict) or not isinstance(record.get("event_id"), str):
                    raise InvalidEventError(
                        f"{path}:{number}: a label needs an event_id", field="event_id", line=number
                    )
                label = _label_of(record)
                if label is None:
                    raise InvalidEventError(
                        f"{path}:{number}: no is_attack, label or step_up field",
                        field="label",
                        line=number,
                    )
                labels[record["event_id"]] = label
    return labels


def audit_labels(paths: list[Path]) -> dict[str, Label]:
    """The labels an audit log holds: failed and passed step-ups, and feedback.

    A plain event log has none of these records and gives no labels; a decision
    record is an event, not a label. Later records override earlier ones.
    """
    labels: dict[str, Label] = {}
    for path in paths:
        if not path.is_file() or path.name.endswith((".gz", ".parquet")):
            continue
        with path.open("rb") as handle:
            for raw in handle:
                if b'"prev_hash"' not in raw or (
                    b'"challenge_result"' not in raw and b'"feedback"' not in raw
                ):
                    continue
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a torn line: `risk-engine audit verify` reports it
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
    window: tuple[float, float] = (math.nan, math.nan)
    unlabelled: int = 0
    undecided: int = 0

    @property
    def established(self) -> NDArray[np.bool_]:
        return self.prior_events >= ESTABLISHED_MIN_PRIOR
