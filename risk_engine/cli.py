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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="processes (default: one per core, up to 4, for a large file)"
        ),
    ] = None,
) -> None:
    """Replay EVENTS in time order through the engine and write the decisions."""
    from risk_engine.backtest import run_backtest

    try:
        summary = run_backtest(
            events,
            out,
            outcomes_path=outcomes,
            model_path=model,
            policy_path=policy,
            workers=workers,
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
    store: Annotated[
        str | None,
        typer.Option(
            help="the service's profile store (URL as RISK_ENGINE_STORE): its keys open the"
            " audit log's sealed decision records; erased users' records stay sealed"
        ),
    ] = None,
) -> None:
    """Replay logs through the feature pipeline and fit the risk model."""
    from risk_engine.model.detector import DetectorParams
    from risk_engine.profiles.factory import open_store
    from training.train import train as run_training

    params = DetectorParams(n_estimators=trees, supervised=supervised, seed=seed)
    try:
        keys = None
        if store is not None:
            opened = open_store(store)
            try:
                keys = opened.sealing_keys()
            finally:
                opened.close()
        artifact, table = run_training(events, out, labels=labels, params=params, keys=keys)
    except (RiskEngineError, ValueError) as exc:
        fail(exc.message if isinstance(exc, RiskEngineError) else str(exc))
    for problem in table.report.problems[:20]:
        typer.echo(f"skipped {problem}", err=True)
    if table.report.sealed:
        typer.echo(
            f"skipped {table.report.sealed} sealed audit decisions (erased users, or no --store)",
            err=True,
        )
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind (default: loopback only)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    store: Annotated[
        str | None, typer.Option(help="profile store URL (default: RISK_ENGINE_STORE or SQLite)")
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="serve without API keys (local development only)")
    ] = False,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="uvicorn's line per request (off by default: every decision is in the"
            " audit log, and the line costs about 55 µs a request)",
        ),
    ] = False,
) -> None:
    """Run the decision service (uvicorn) with settings from RISK_ENGINE_* variables."""
    import os

    import uvicorn

    from risk_engine.api.app import server_options
    from risk_engine.config import Settings

    # Workers are separate processes that build their settings from the environment.
    os.environ["RISK_ENGINE_HOST"] = host
    os.environ["RISK_ENGINE_PORT"] = str(port)
    if store is not None:
        os.environ["RISK_ENGINE_STORE"] = store
    if no_auth:
        os.environ["RISK_ENGINE_AUTH_DISABLED"] = "true"
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: name the bad variable
        fail(f"invalid settings: {exc}")
    if workers > 1 and settings.store.lower().startswith("memory:"):
        # Each worker process would learn on a memory of its own.
        fail(
            f"--workers {workers} needs a store the worker processes share: set"
            " RISK_ENGINE_STORE (or --store) to redis://host:port/db (or SQLite, on one"
            " host); memory:// lives inside one process"
        )
    if settings.store.startswith("sqlite:///"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        "risk_engine.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **server_options(access_log=access_log),
    )


@app.command()
def apikey() -> None:
    """Generate an API key; print it and its sha256 for RISK_ENGINE_API_KEYS_SHA256."""
    import hashlib
    import secrets

    key = "rek_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    typer.echo(f"key:    {key}")
    typer.echo(f"sha256: {digest}")
    typer.echo(f"RISK_ENGINE_API_KEYS_SHA256='[\"{digest}\"]'")


audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path, typer.Argument(help="audit log (JSON Lines)")],
) -> None:
    """Check the hash chain: 'ok: N records', or the first broken line (exit 1)."""
    from risk_engine.audit import verify_chain

    if not path.is_file():
        fail(f"audit log not found: {path}")
    result = verify_chain(path)
    if not result.ok:
        typer.echo(f"broken at line {result.broken_line}: {result.problem}")
        raise typer.Exit(1)
    typer.echo(f"ok: {result.records} records")


@app.command()
def evaluate(
    events: Annotated[Path, typer.Argument(help="labelled evaluation log (a later/other log)")],
    labels: Annotated[Path, typer.Option("--labels", help="labels of EVENTS")],
    decisions: Annotated[
        Path | None, typer.Option(help="decisions of a backtest of EVENTS (default: run one)")
    ] = None,
    outcomes: Annotated[
        Path | None, typer.Option(help="step-up outcomes (default: from the labels)")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="model artifact (default: bundled)")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy TOML (default: bundled)")] = None,
    baseline_train: Annotated[
        list[Path] | None,
        typer.Option(
            "--baseline-train", help="training log(s) of the Freeman baseline (repeatable)"
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option("--rate", min=0.0, max=1.0, help="the fixed challenge rate")
    ] = 0.02,
    json_out: Annotated[Path | None, typer.Option("--json", help="write all figures")] = None,
) -> None:
    """Engine against the Freeman et al. baseline: AUC, AP, friction and catch per type."""
    from rich.console import Console

    from training.evaluate import evaluate as run_evaluation
    from training.evaluate import render, write_json

    try:
        report, _ = run_evaluation(
            events,
            labels,
            decisions_path=decisions,
            outcomes_path=outcomes,
            model_path=model,
            policy_path=policy,
            baseline_train=baseline_train,
            fixed_rate=rate,
        )
    except RiskEngineError as exc:
        fail(exc.message)
    # Off a terminal (a log, a report), do not squeeze the table into 80 columns.
    render(report, Console(width=None if sys.stdout.isatty() else 110))
    if json_out is not None:
        write_json(report, json_out)
        typer.echo(f"figures -> {json_out}", err=True)


@app.command()
def calibrate(
    events: Annotated[Path, typer.Argument(help="labelled log to calibrate on")],
    labels: Annotated[Path, typer.Option("--labels", help="labels of EVENTS")],
    out: Annotated[Path, typer.Option("--out", help="policy TOML to write")],
    decisions: Annotated[
        Path | None, typer.Option(help="decisions of a backtest of EVENTS (default: run one)")
    ] = None,
    outcomes: Annotated[
        Path | None, typer.Option(help="step-up outcomes (default: from the labels)")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="model artifact (default: bundled)")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="policy to start from (default: bundled)")
    ] = None,
    target_challenge: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="legitimate challenge rate per class")
    ] = 0.02,
    target_deny: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="legitimate deny rate per class")
    ] = 0.001,
    min_legit: Annotated[
        int, typer.Option(min=1, help="fewer legitimate events: the class keeps its thresholds")
    ] = 200,
) -> None:
    """Per action class, thresholds that meet the targets; writes a new policy version."""
    from rich.console import Console

    from training.calibrate import calibrate_log, render_calibration

    try:
        written, rows = calibrate_log(
            events,
            labels,
            out,
            decisions_path=decisions,
            outcomes_path=outcomes,
            model_path=model,
            policy_path=policy,
            target_challenge=target_challenge,
            target_deny=target_deny,
            min_legit=min_legit,
        )
    except RiskEngineError as exc:
        fail(exc.message)
    render_calibration(rows, written.version, Console(width=None if sys.stdout.isatty() else 160))
    typer.echo(f"policy {written.version} -> {out} (validated)", err=True)


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
