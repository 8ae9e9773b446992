"""Friction where it falls: the legitimate challenge rate per context.

A log whose labels say where each legitimate event happened (the simulator's
``context``: home, work, corporate, cellular, vpn, trip_domestic, trip_abroad,
borrowed_device) shows whether a low overall rate hides a group of customers
who are challenged all the time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from risk_engine.offline.labels import Label, LabelledRun

UNKNOWN = "(none)"


def contexts_of(run: LabelledRun, labels: dict[str, Label]) -> NDArray[np.str_] | None:
    """Each event's context from its label ("" for attacks), None when no label has one."""
    values = []
    found = False
    for event_id in run.event_ids:
        label = labels.get(event_id)
        context = label.context if label is not None else None
        found = found or context is not None
        values.append(context or "")
    return np.asarray(values, dtype=str) if found else None


def context_figures(
    run: LabelledRun, contexts: NDArray[np.str_], mask: NDArray[np.bool_] | None = None
) -> dict[str, dict[str, Any]]:
    """Per context of the legitimate events in ``mask``: count, challenged and denied shares."""
    legit = ~run.attack if mask is None else mask & ~run.attack
    out: dict[str, dict[str, Any]] = {}
    names = sorted(set(contexts[legit].tolist()))
    for name in names:
        rows = legit & (contexts == name)
        outcome = run.outcome[rows]
        out[name or UNKNOWN] = {
            "legit": int(rows.sum()),
            "challenged": float((outcome >= 1).mean()),
            "denied": float((outcome >= 2).mean()),
        }
    return out


def render_contexts(figures: dict[str, dict[str, Any]], console: Console, title: str) -> None:
    """One row per context, most challenged first."""
    table = Table(title=title)
    for head in ("context", "legit events", "challenged", "denied"):
        table.add_column(head, justify="left" if head == "context" else "right")
    ranked = sorted(figures.items(), key=lambda item: -item[1]["challenged"])
    for name, row in ranked:
        table.add_row(
            name,
            f"{row['legit']:,}",
            f"{100.0 * row['challenged']:.2f}%",
            f"{100.0 * row['denied']:.2f}%",
        )
    console.print(table)
