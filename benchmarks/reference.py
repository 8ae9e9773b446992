"""A yardstick for the machine a benchmark ran on: the same pure-Python loop, timed.

The development machine's speed varies from hour to hour (a shared 2-core VM):
the same decision measured 150 µs in one hour and 240 µs in another. Each
benchmark prints this line first, so that figures from different runs can be
compared, and so that a before/after pair is only compared when its yardsticks
agree.
"""

from __future__ import annotations

import sys
import time

from risk_engine.compiled import check_fresh

LOOP = 3_000_000


def python_speed() -> str:
    """The best of three runs of a fixed loop, as a line to print."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(LOOP):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return f"yardstick: {LOOP:,} iterations of a pure-Python loop in {best * 1e3:.0f} ms"


def core_mode() -> str:
    """Which decision core runs (compiled or its sources), as a line to print.

    Exits when a compiled module is older than its source: its figures would be
    those of code the source no longer says.
    """
    try:
        status = check_fresh()
    except RuntimeError as exc:
        sys.exit(f"benchmark not run: {exc}")
    return f"decision core: {status.mode}, {len(status.compiled)} modules compiled"
