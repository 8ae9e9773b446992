"""The `risk-engine` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from risk_engine.errors import ConfigurationError, RiskEngineError
from risk_engine.scopes import Scope

if TYPE_CHECKING:
    from risk_engine.offline.synthesize import SynthesisConfig

app = typer.Typer(
    name="risk-engine",
    help="Behavioral risk scoring for step-up authentication.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from risk_engine import __version__

        typer.echo(f"risk-engine {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Behavioral risk scoring for step-up authentication."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear message (no traceback) and exit non-zero."""
    typer.secho(f"risk-engine: error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# Bad lines named one by one on stderr; the rest are counted in the summary.
SHOWN_PROBLEMS = 20


def echo_skipped(problems: Sequence[object], bad: int) -> None:
    """Name the first bad lines skipped (file, line, what is wrong) on stderr."""
    for problem in problems[:SHOWN_PROBLEMS]:
        typer.echo(f"skipped {problem}", err=True)
    if bad > SHOWN_PROBLEMS:
        typer.echo(f"... and {bad - SHOWN_PROBLEMS} more bad lines", err=True)


# Where the offline commands run (``risk_engine.offline.cluster.plan_engine``).
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        help="a Dask scheduler to run on, e.g. tcp://host:8786 (default: a local cluster"
        " for large inputs, this process for small ones); the dashboard's address is"
        " printed when a cluster is used"
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=64,
        help="local Dask worker processes without --scheduler; 1: this process"
        " (default: one per core for inputs of 16 MiB and more)",
    ),
]


@app.command()
def backtest(
    events: Annotated[
        list[str],
        typer.Argument(
            help="events (contract section 1): JSONL, JSONL.gz, Parquet; files, dirs, globs"
            " or URLs (https://, s3://, ... through fsspec)",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="where to write one decision per event (.jsonl, .jsonl.gz or .parquet)",
        ),
    ],
    outcomes: Annotated[
        Path | None,
        typer.Option(help='step-up outcomes: {"event_id": ..., "step_up": "passed"|"failed"}'),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="model artifact (default: bundled)")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy TOML (default: bundled)")] = None,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
) -> None:
    """Replay EVENTS in time order through the engine and write the decisions.

    A progress bar is shown on a terminal. On a cluster, the workers need the
    project installed and EVENTS, --model and --policy readable at the same paths
    (or URLs); a URL is read where it lies, by each worker for its own pieces.
    """
    from risk_engine.offline.backtest import run_backtest

    try:
        summary = run_backtest(
            events,
            out,
            outcomes_path=outcomes,
            model_path=model,
            policy_path=policy,
            workers=workers,
            scheduler=scheduler,
        )
    except RiskEngineError as exc:
        fail(exc.message)
    echo_skipped(summary.problems, summary.bad + summary.outcome_lines_bad)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions.items()))
    typer.echo(
        f"{summary.events} events -> {out} ({counts});"
        f" {summary.bad + summary.outcome_lines_bad} bad lines skipped; "
        f"{summary.outcomes_applied} step-up outcomes applied; "
        f"{summary.events_per_second:,.0f} events/s ({summary.engine});"
        f" model {summary.model_version}",
        err=True,
    )


@app.command()
def simulate(
    out: Annotated[
        Path, typer.Option("--out", help="events file to write (.jsonl, .jsonl.gz, .parquet)")
    ],
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
    world: Annotated[
        str,
        typer.Option(
            help="who the users and attackers are: a preset (default, retail, corporate,"
            " mobile-heavy) or a TOML world file"
        ),
    ] = "default",
    cellular_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="users mostly on carrier networks")
    ] = None,
    vpn_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="users always behind a VPN")
    ] = None,
    corporate_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="users in offices shared by many")
    ] = None,
    trip_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="users who take a trip")
    ] = None,
    attacker_skill: Annotated[
        str | None, typer.Option(help="naive, mixed or skilled attackers")
    ] = None,
    id_prefix: Annotated[
        str,
        typer.Option(
            help="put before every user, session and event id (to train on several worlds at once)"
        ),
    ] = "",
) -> None:
    """Write a seeded, realistic event stream and its labels (with each event's context)."""
    from datetime import UTC

    from risk_engine.offline.simulate.simulator import SimulationConfig, write_simulation
    from risk_engine.offline.simulate.world import load_world, with_settings

    try:
        first = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        fail(f"--start must be YYYY-MM-DD, got {start!r}")
    overrides = {
        "cellular_share": cellular_share,
        "vpn_share": vpn_share,
        "corporate_share": corporate_share,
        "trip_share": trip_share,
        "attacker_skill": attacker_skill,
    }
    try:
        given = {k: v for k, v in overrides.items() if v is not None}
        chosen = with_settings(load_world(world), given, "the command line")
    except RiskEngineError as exc:
        fail(exc.message)
    config = SimulationConfig(
        users=users,
        days=days,
        seed=seed,
        start=first,
        attack_fraction=attack_fraction,
        world=chosen,
        id_prefix=id_prefix,
    )
    summary = write_simulation(config, out, labels, outcomes)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_attack_type.items()))
    typer.echo(
        f"{summary.events} events, {summary.attacks} attack events ({kinds}) -> {out}"
        f" (world {chosen.name})"
    )


_ATTACK_KINDS = (
    "new_country_takeover",
    "vpn_takeover",
    "targeted_takeover",
    "session_hijack",
    "credential_stuffing",
    "compromised_device",
)


# The attack synthesis options `train` and `evaluate` share.
AttackRate = Annotated[
    float, typer.Option(min=0.0001, max=0.5, help="injected events per real event")
]
AttackMix = Annotated[
    str | None,
    typer.Option(help="kind=weight,... (" + ", ".join(_ATTACK_KINDS) + "; default: all)"),
]
AttackKnowledge = Annotated[
    str,
    typer.Option(help="what the attackers know, comma-separated: naive, vpn, targeted, device"),
]
DEFAULT_KNOWLEDGE = "naive,vpn,targeted,device"
# risk_engine.offline.sample.SAMPLE_ROWS, without importing the offline package for --help
SAMPLE_ROWS_DEFAULT = 1 << 17


def _synthesis_config(seed: int, rate: float, mix: str | None, knowledge: str) -> SynthesisConfig:
    """The attack synthesis options as a validated configuration."""
    from risk_engine.offline.synthesize import DEFAULT_MIX, SynthesisConfig, parse_mix

    return SynthesisConfig(
        seed=seed,
        rate=rate,
        mix=parse_mix(mix) if mix else dict(DEFAULT_MIX),
        knowledge=tuple(k.strip() for k in knowledge.split(",") if k.strip()),
    )


@app.command()
def train(
    events: Annotated[
        list[str],
        typer.Argument(
            help="event logs: JSONL, JSONL.gz, Parquet; files, dirs, globs or URLs (https://,"
            " s3://, ... through fsspec)",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="artifact to write, e.g. models/my.npz")],
    labels: Annotated[
        list[Path] | None,
        typer.Option("--labels", help="label files (simulator labels, feedback, outcomes)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed of the detectors")] = 0,
    trees: Annotated[int, typer.Option(min=10, max=2000, help="isolation trees")] = 200,
    supervised: Annotated[
        bool, typer.Option(help="add the supervised model where labels exist")
    ] = True,
    synthesize_attacks: Annotated[
        bool | None,
        typer.Option(
            "--synthesize-attacks/--no-synthesize-attacks",
            help="inject labelled attacks built from the log's own users (default: on when"
            " the labels hold too few attacks)",
            show_default=False,
        ),
    ] = None,
    attack_rate: AttackRate = 0.01,
    attack_mix: AttackMix = None,
    attack_knowledge: AttackKnowledge = DEFAULT_KNOWLEDGE,
    attack_seed: Annotated[
        int | None, typer.Option(help="seed of the synthesized attacks (default: --seed)")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="the service's profile store (URL as RISK_ENGINE_STORE): its keys open the"
            " audit log's sealed decision records; erased users' records stay sealed"
        ),
    ] = None,
    sample_rows: Annotated[
        int,
        typer.Option(
            min=1000,
            help="legitimate feature rows kept to fit on, a seeded uniform sample (every"
            " labelled attack is kept too): what bounds the memory of this process",
        ),
    ] = SAMPLE_ROWS_DEFAULT,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
) -> None:
    """Replay logs through the feature pipeline and fit the risk model.

    The features are computed in this process or on a Dask cluster (see --scheduler)
    with the same result; this process keeps only a bounded sample of the rows. A
    progress bar is shown on a terminal.
    """
    from risk_engine.model.detector import DetectorParams
    from risk_engine.offline.train import train as run_training
    from risk_engine.profiles.factory import open_store

    params = DetectorParams(n_estimators=trees, supervised=supervised, seed=seed)
    try:
        keys = None
        if store is not None:
            opened = open_store(store)
            try:
                keys = opened.sealing_keys()
            finally:
                opened.close()
        synthesis = _synthesis_config(
            seed if attack_seed is None else attack_seed, attack_rate, attack_mix, attack_knowledge
        )
        artifact, table = run_training(
            events,
            out,
            labels=labels,
            params=params,
            synthesize=synthesize_attacks,
            synthesis=synthesis,
            keys=keys,
            sample_rows=sample_rows,
            scheduler=scheduler,
            workers=workers,
            progress=None,
        )
    except (RiskEngineError, ValueError) as exc:
        fail(exc.message if isinstance(exc, RiskEngineError) else str(exc))
    echo_skipped(table.report.problems, table.report.bad)
    if table.report.sealed:
        typer.echo(
            f"skipped {table.report.sealed} sealed audit decisions (erased users, or no --store)",
            err=True,
        )
    injected = artifact.training.get("synthesis", {})
    if injected.get("enabled"):
        kinds = ", ".join(f"{k} {v}" for k, v in injected["events_by_kind"].items())
        typer.echo(
            f"synthesized attacks: {injected['reason']}; {injected['injected_events']} events"
            f" in {sum(injected['episodes_by_kind'].values())} episodes ({kinds}),"
            f" seed {injected['seed']}"
        )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in artifact.metrics.items() if isinstance(v, float))
    typer.echo(
        f"trained {artifact.model_version} on {artifact.training['events']} events "
        f"({artifact.training['attacks']} attacks, {table.report.bad} bad lines;"
        f" fitted on a sample of {table.X.shape[0]} rows) -> {out}"
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


@app.command("convert-model")
def convert_model(
    source: Annotated[Path, typer.Argument(help="a pickled (joblib) model of format 1")],
    out: Annotated[Path, typer.Option("--out", help="the model archive to write, e.g. my.npz")],
    trusted_pickle: Annotated[
        bool,
        typer.Option(
            "--trusted-pickle",
            help="required: SOURCE is unpickled, which runs any code it holds; its checksum"
            " proves integrity, not who wrote it, so say you trust where it came from",
        ),
    ] = False,
) -> None:
    """UNPICKLES a trusted joblib model of an earlier version and writes it as data.

    Reading SOURCE runs any code it holds: use this only on a model you trained
    yourself or otherwise trust. The written archive holds only arrays and JSON,
    scores as SOURCE's scikit-learn detectors did (checked before it is written)
    and keeps its model version.
    """
    from risk_engine.model.legacy import convert_trusted_pickle

    if not trusted_pickle:
        fail(
            f"{source} would be unpickled, which runs any code it holds: pass"
            " --trusted-pickle if you trust it, or retrain with `risk-engine train`"
        )
    try:
        artifact = convert_trusted_pickle(source, out, trusted=True)
    except (RiskEngineError, ValueError) as exc:
        fail(exc.message if isinstance(exc, RiskEngineError) else str(exc))
    typer.echo(f"converted {artifact.model_version} -> {out}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind (default: loopback only)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="worker processes (more than 1 needs RISK_ENGINE_SECRET; /metrics sums them)",
        ),
    ] = 1,
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
    os.environ["RISK_ENGINE_WORKERS"] = str(workers)
    if store is not None:
        os.environ["RISK_ENGINE_STORE"] = store
    if no_auth:
        os.environ["RISK_ENGINE_AUTH_DISABLED"] = "true"
    try:
        settings = Settings.from_environment()
    except RiskEngineError as exc:
        fail(exc.message)
    except ValueError as exc:  # pydantic's ValidationError: name the bad variable
        fail(f"invalid settings: {exc}")
    if workers > 1 and settings.store.lower().startswith("memory:"):
        # Each worker process would learn on a memory of its own.
        fail(
            f"--workers {workers} needs a store the worker processes share: set"
            " RISK_ENGINE_STORE (or --store) to redis://host:port/db (or SQLite, on one"
            " host); memory:// lives inside one process"
        )
    try:
        # Refused here, with one clear line, rather than in every worker's start-up; the
        # audit key is created now, before the workers race to.
        settings.require_shared_secret()
        settings.secure_files()
        settings.resolve_secret()
        settings.resolve_previous_secret()
        settings.resolve_audit_key()
        if workers > 1:
            _metrics_dir(settings.var_dir)
    except RiskEngineError as exc:
        fail(exc.message)
    uvicorn.run(
        "risk_engine.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=_server_log_config(),
        **server_options(access_log=access_log),
    )


def _server_log_config() -> dict[str, Any]:
    """uvicorn's logging, and the engine's own INFO lines (the settings, the model) beside it."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["risk_engine"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _metrics_dir(var_dir: Path) -> None:
    """A fresh var/prometheus for the workers' metrics files (prometheus-client multiprocess).

    Emptied at every start: files of an earlier run's workers would be counted again.
    """
    import os
    import shutil

    from risk_engine.config import private_dir

    path = var_dir / "prometheus"
    try:
        if path.exists():
            shutil.rmtree(path)
        private_dir(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot make the metrics directory {path}: {exc}") from exc
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())


@app.command()
def apikey(
    scope: Annotated[
        Scope,
        typer.Option(
            help="decide: decisions, step-up results, feedback (the application's key);"
            " admin: erasure, reload, model, readiness details, metrics (the operator's);"
            " metrics: /metrics only (the scraper's)",
            case_sensitive=False,
        ),
    ],
) -> None:
    """Make an API key of one scope: print the key and the setting that accepts it.

    The key is shown once and never stored: the setting holds its sha256. Each key
    is a variable of its own, so the settings of several keys are added side by side.
    """
    import hashlib
    import secrets

    from risk_engine.config import KEY_VARIABLE_PREFIX

    key = "rek_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    typer.echo(f"key: {key}")
    typer.echo(f"sha256: {digest}")
    name = f"{KEY_VARIABLE_PREFIX}{scope.value.upper()}_{digest[:12].upper()}"
    typer.echo(f"{name}={scope.value}:{digest}")


audit_app = typer.Typer(help="The audit log, chained under its key.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="the audit log's directory, or its files (segments oldest first, then the"
            " active file)",
            show_default=False,
        ),
    ],
    key_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--key-file",
            help="an audit key file (repeatable, for rotated keys; default: the var"
            " directory's audit.key); RISK_ENGINE_AUDIT_KEY is used as well",
        ),
    ] = None,
) -> None:
    """Check every record's hmac and link across segments: 'ok: N records', or every break."""
    from datetime import UTC

    from risk_engine.audit import AuditKey, audit_segments, verify_segments
    from risk_engine.config import Settings

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            try:
                files.extend(audit_segments(path))
            except RiskEngineError as exc:
                fail(exc.message)
        elif path.is_file():
            files.append(path)
        else:
            fail(f"audit log not found: {path}")
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: name the bad variable
        fail(f"invalid settings: {exc}")
    try:
        keys = [AuditKey.from_file(file) for file in key_file or []]
        if settings.audit_key is not None:
            keys.append(settings.resolve_audit_key())
        if not key_file and settings.audit_key_path.is_file():
            keys.append(AuditKey.from_file(settings.audit_key_path))
    except RiskEngineError as exc:
        fail(exc.message)
    if not keys:
        fail(
            f"no audit key: give --key-file, set RISK_ENGINE_AUDIT_KEY or run where"
            f" {settings.audit_key_path} is"
        )
    result = verify_segments(files, keys)
    legacy = ""
    if result.sealed_by is not None:
        # When the unkeyed part was sealed: a date after the upgrade means a rewrite.
        line, ts = result.sealed_by
        when = datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
        legacy = f" (and {result.legacy} unkeyed legacy records, sealed at line {line}, {when})"
    if result.starts_at is not None:
        legacy += f" (the chain starts at {result.starts_at}: older segments expired)"
    for found in result.breaks:
        where = f"{found.source}, " if len(files) > 1 else ""
        typer.echo(f"{where}line {found.line}: {found.problem}")
    if result.breaks:
        typer.echo(f"{len(result.breaks)} break(s); {result.records} records verified{legacy}")
        raise typer.Exit(1)
    segments = f" in {len(files)} segments" if len(files) > 1 else ""
    typer.echo(f"ok: {result.records} records{segments}{legacy}")


@app.command()
def evaluate(
    events: Annotated[
        str,
        typer.Argument(help="labelled evaluation log (a later/other log): a path or a URL"),
    ],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="labels of EVENTS (optional with --synthesize-attacks)"),
    ] = None,
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
    synthesize_attacks: Annotated[
        bool,
        typer.Option(
            "--synthesize-attacks",
            help="also report catch per kind of attacks synthesized on EVENTS' own users"
            " (beside the labels' own figures, which stay the independent judge)",
        ),
    ] = False,
    attack_rate: AttackRate = 0.01,
    attack_mix: AttackMix = None,
    attack_knowledge: AttackKnowledge = DEFAULT_KNOWLEDGE,
    attack_seed: Annotated[int, typer.Option(help="seed of the synthesized attacks")] = 1,
    split_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="the deployment flow: train and calibrate WITHOUT labels on the first N"
            " days of EVENTS, judge the rest (no --model, --decisions, --baseline-train)",
        ),
    ] = None,
    target_challenge: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="with --split-days: calibration target")
    ] = 0.02,
    trees: Annotated[
        int, typer.Option(min=10, max=2000, help="with --split-days: isolation trees")
    ] = 200,
    seed: Annotated[int, typer.Option(help="with --split-days: the detectors' seed")] = 0,
    save_model: Annotated[
        Path | None, typer.Option(help="with --split-days: keep the trained model here")
    ] = None,
    save_policy: Annotated[
        Path | None, typer.Option(help="with --split-days: keep the calibrated policy here")
    ] = None,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
) -> None:
    """Engine against the Freeman et al. baseline: AUC, AP, friction and catch per type.

    With --split-days N, the deployment flow instead: shadow days 1..N (train and
    calibrate without labels), then ROC AUC, friction overall and per context, and
    catch per attack type on the later days, against the project's targets.

    The backtests run in this process or on a Dask cluster (see --scheduler), with a
    progress bar on a terminal; this process then holds a few columns per event.
    """
    from rich.console import Console

    from risk_engine.offline.evaluate import evaluate as run_evaluation
    from risk_engine.offline.evaluate import render, write_json
    from risk_engine.offline.remote import log_path

    log = log_path(events)
    # Off a terminal (a log, a report), do not squeeze the table into 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 160)
    if split_days is not None:
        from risk_engine.model.detector import DetectorParams
        from risk_engine.offline.deployment import evaluate_deployment, render_deployment

        if model is not None or decisions is not None or baseline_train:
            fail("--split-days trains its own model: drop --model, --decisions, --baseline-train")
        if labels is None:
            fail("--split-days judges the later days against --labels: give them")
        try:
            report, rows = evaluate_deployment(
                log,
                labels,
                split_days=split_days,
                outcomes_path=outcomes,
                policy_path=policy,
                params=DetectorParams(n_estimators=trees, seed=seed),
                target_challenge=target_challenge,
                fixed_rate=rate,
                model_out=save_model,
                policy_out=save_policy,
                scheduler=scheduler,
                workers=workers,
            )
        except (RiskEngineError, ValueError) as exc:
            fail(exc.message if isinstance(exc, RiskEngineError) else str(exc))
        render_deployment(report, rows, console)
        echo_skipped(report["inputs"]["problems"], report["inputs"]["bad_lines"])
        if json_out is not None:
            write_json(report, json_out)
            typer.echo(f"figures -> {json_out}", err=True)
        return
    if synthesize_attacks:
        from risk_engine.offline.synthetic_eval import evaluate_with_synthesis

        if decisions is not None or outcomes is not None:
            fail("--decisions and --outcomes cannot be combined with --synthesize-attacks")
        try:
            config = _synthesis_config(attack_seed, attack_rate, attack_mix, attack_knowledge)
            reports = evaluate_with_synthesis(
                log,
                labels,
                config,
                model_path=model,
                policy_path=policy,
                baseline_train=baseline_train,
                fixed_rate=rate,
                scheduler=scheduler,
                workers=workers,
                progress=None,
            )
        except RiskEngineError as exc:
            fail(exc.message)
        titles = {
            "independent": "Independent judge: the log's own labels",
            "synthesized": "Synthesized attacks on the log's own users (kinds synthetic:*)",
        }
        for name, report in reports.items():
            console.rule(titles[name])
            render(report, console)
            echo_skipped(report["inputs"]["problems"], report["inputs"]["bad_lines"])
        if json_out is not None:
            write_json(reports, json_out)
            typer.echo(f"figures -> {json_out}", err=True)
        return
    if labels is None:
        fail("--labels is required (or --synthesize-attacks, for a log without labels)")
    try:
        report, _ = run_evaluation(
            log,
            labels,
            decisions_path=decisions,
            outcomes_path=outcomes,
            model_path=model,
            policy_path=policy,
            baseline_train=baseline_train,
            fixed_rate=rate,
            scheduler=scheduler,
            workers=workers,
            progress=None,
        )
    except RiskEngineError as exc:
        fail(exc.message)
    render(report, console)
    echo_skipped(report["inputs"]["problems"], report["inputs"]["bad_lines"])
    if json_out is not None:
        write_json(report, json_out)
        typer.echo(f"figures -> {json_out}", err=True)


@app.command()
def calibrate(
    events: Annotated[
        str, typer.Argument(help="log to calibrate on (e.g. the shadow days): a path or a URL")
    ],
    out: Annotated[Path, typer.Option("--out", help="policy TOML to write")],
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="labels of EVENTS (default: none; events count as legitimate unless a"
            " step-up the engine asked for failed (--outcomes) or --feedback says fraud,"
            " and no deny threshold is lowered)",
        ),
    ] = None,
    feedback: Annotated[
        list[Path] | None,
        typer.Option("--feedback", help="feedback log(s) of /v1/events/{id}/feedback"),
    ] = None,
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
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="legitimate deny rate per class (without --labels a ceiling only: deny is"
            " raised to meet it, never lowered)",
        ),
    ] = 0.001,
    min_legit: Annotated[
        int, typer.Option(min=1, help="fewer legitimate events: the class keeps its thresholds")
    ] = 200,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
) -> None:
    """Per action class, thresholds that meet the targets; writes a new policy version.

    The backtest runs in this process or on a Dask cluster (see --scheduler), with a
    progress bar on a terminal; this process then holds a few columns per event.
    """
    from rich.console import Console

    from risk_engine.offline.calibrate import calibrate_log, render_calibration
    from risk_engine.offline.remote import log_path

    try:
        written, rows, reading = calibrate_log(
            log_path(events),
            labels,
            out,
            feedback_paths=feedback,
            decisions_path=decisions,
            outcomes_path=outcomes,
            model_path=model,
            policy_path=policy,
            target_challenge=target_challenge,
            target_deny=target_deny,
            min_legit=min_legit,
            scheduler=scheduler,
            workers=workers,
            progress=None,
        )
    except RiskEngineError as exc:
        fail(exc.message)
    render_calibration(rows, written.version, Console(width=None if sys.stdout.isatty() else 160))
    echo_skipped(reading.problems, reading.bad)
    typer.echo(
        f"policy {written.version} -> {out} (validated); {reading.bad} bad lines skipped", err=True
    )


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
