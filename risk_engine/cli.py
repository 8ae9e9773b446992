"""The `risk-engine` command."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from risk_engine.errors import RiskEngineError

app = typer.Typer(
    name="risk-engine",
    help="Behavioral risk scoring for step-up authentication.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear message (no traceback) and exit non-zero."""
    typer.secho(f"risk-engine: error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def backtest(
    events: Annotated[Path, typer.Argument(help="events, JSON Lines (contract section 1)")],
    out: Annotated[Path, typer.Option("--out", help="where to write one decision per event")],
    outcomes: Annotated[
        Path | None,
        typer.Option(help='step-up outcomes: {"event_id": ..., "step_up": "passed"|"failed"}'),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="model artifact (default: bundled)")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy TOML (default: bundled)")] = None,
) -> None:
    """Replay EVENTS in time order through the engine and write the decisions."""
    from risk_engine.backtest import run_backtest

    try:
        summary = run_backtest(
            events, out, outcomes_path=outcomes, model_path=model, policy_path=policy
        )
    except RiskEngineError as exc:
        fail(exc.message)
    for problem in summary.problems[:20]:
        typer.echo(f"skipped {problem}", err=True)
    if len(summary.problems) > 20:
        typer.echo(f"... and {len(summary.problems) - 20} more problems", err=True)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions.items()))
    typer.echo(
        f"{summary.events} events -> {out} ({counts}); {summary.bad} bad lines skipped; "
        f"{summary.outcomes_applied} step-up outcomes applied; "
        f"{summary.events_per_second:,.0f} events/s; model {summary.model_version}",
        err=True,
    )


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="events file to write (JSON Lines)")],
    labels: Annotated[Path, typer.Option("--labels", help="labels file to write")],
    outcomes: Annotated[
        Path | None, typer.Option(help="also write step-up outcomes (legit passed, attacks failed)")
    ] = None,
    users: Annotated[int, typer.Option(min=1, help="number of users")] = 200,
    days: Annotated[int, typer.Option(min=1, help="days of activity")] = 30,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 7,
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD (UTC)")] = "2026-01-05",
    attack_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="share of events that are attacks")
    ] = 0.01,
) -> None:
    """Write a seeded, realistic event stream and its labels."""
    from datetime import UTC

    from training.simulate import SimulationConfig, write_simulation

    try:
        first = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        fail(f"--start must be YYYY-MM-DD, got {start!r}")
    config = SimulationConfig(
        users=users, days=days, seed=seed, start=first, attack_fraction=attack_fraction
    )
    summary = write_simulation(config, out, labels, outcomes)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_attack_type.items()))
    typer.echo(f"{summary.events} events, {summary.attacks} attack events ({kinds}) -> {out}")


@app.command()
def train(
    events: Annotated[
        list[Path], typer.Argument(help="event logs: JSONL, JSONL.gz, Parquet, dirs")
    ],
    out: Annotated[Path, typer.Option("--out", help="artifact to write, e.g. models/my.joblib")],
    labels: Annotated[
        list[Path] | None,
        typer.Option("--labels", help="label files (simulator labels, feedback, outcomes)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed of the detectors")] = 0,
    trees: Annotated[int, typer.Option(min=10, max=2000, help="isolation trees")] = 200,
    supervised: Annotated[
        bool, typer.Option(help="add the supervised model where labels exist")
    ] = True,
) -> None:
    """Replay logs through the feature pipeline and fit the risk model."""
    from risk_engine.model.detector import DetectorParams
    from training.train import train as run_training

    params = DetectorParams(n_estimators=trees, supervised=supervised, seed=seed)
    try:
        artifact, table = run_training(events, out, labels=labels, params=params)
    except (RiskEngineError, ValueError) as exc:
        fail(exc.message if isinstance(exc, RiskEngineError) else str(exc))
    for problem in table.report.problems[:20]:
        typer.echo(f"skipped {problem}", err=True)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in artifact.metrics.items() if isinstance(v, float))
    typer.echo(
        f"trained {artifact.model_version} on {table.X.shape[0]} events "
        f"({int(table.attack.sum())} attacks, {table.report.bad} bad lines) -> {out}"
        + (f"; holdout {metrics}" if metrics else "")
    )


@app.command("model")
def model_info(
    path: Annotated[Path | None, typer.Argument(help="artifact (default: bundled)")] = None,
) -> None:
    """Verify a model artifact and print its envelope."""
    import orjson

    from risk_engine.model.artifact import default_model_path, load_artifact

    try:
        artifact = load_artifact(path or default_model_path())
    except RiskEngineError as exc:
        fail(exc.message)
    summary = artifact.summary()
    summary.pop("feature_names")
    typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
