"""The decision log: every decision, step-up result, feedback and erasure, queryable.

The audit chain stays the tamper-evident record; this is its index, for the
operator's questions ("why was this user challenged?") and the console. It is
written off the request path (``writer.DecisionLogWriter``), embedded SQLite by
default and PostgreSQL when several replicas must share one view::

    entries.py   what a row holds, the filters, cursors and pages
    sql.py       the one SQL backend: schema, writes, queries, rollups (both dialects)
    writer.py    the background writer: a bounded queue, batches, never blocks a request
    process.py   the server's transport: that writer in a child process of its own
"""

from __future__ import annotations

from risk_engine.decision_log.entries import (
    DecisionFilter,
    LogEntry,
    Overview,
    Page,
)
from risk_engine.decision_log.process import DecisionLogProcess, open_decision_log_writer
from risk_engine.decision_log.sql import DecisionLog, open_decision_log
from risk_engine.decision_log.writer import DecisionLogWriter

__all__ = [
    "DecisionFilter",
    "DecisionLog",
    "DecisionLogProcess",
    "DecisionLogWriter",
    "LogEntry",
    "Overview",
    "Page",
    "open_decision_log",
    "open_decision_log_writer",
]
