"""The one builder of the engine, for the service, the backtest and training alike.

The service builds it from its settings (store, GeoIP, model and policy, a shadow
pair, the secret and, during a rotation, the previous one); the offline tools
without settings: deterministic keys, so that a backtest is a pure function of
its inputs, an in-memory store, the defaults for the rest, and for the backtest
event time as the clock. Either way it is the same ``Engine``, so every caller
scores, decides and learns through the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from risk_engine.config import Settings
from risk_engine.engine import Engine, Scorer
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import default_model_path, load_artifact
from risk_engine.policy import load_policy
from risk_engine.privacy import Hasher
from risk_engine.profiles.factory import open_store
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.store import ProfileStore

# The offline engine's secret: deterministic keys, the same in every process and run.
BACKTEST_SECRET = "risk-engine-backtest"


def load_scorer(model_path: Path | None, policy_path: Path | None) -> Scorer:
    """Load a verified model artifact and a validated policy (defaults when None)."""
    return Scorer(
        artifact=load_artifact(model_path or default_model_path()),
        policy=load_policy(policy_path),
    )


def load_scorers(settings: Settings) -> tuple[Scorer, Scorer | None]:
    """The live model and policy of the settings, and the shadow pair if one is set."""
    live = load_scorer(settings.model_path, settings.policy_path)
    shadow = None
    if settings.shadow_model_path or settings.shadow_policy_path:
        shadow = load_scorer(
            settings.shadow_model_path or settings.model_path,
            settings.shadow_policy_path or settings.policy_path,
        )
    return live, shadow


def build_engine(
    settings: Settings | None = None,
    *,
    store: ProfileStore | None = None,
    geo: GeoLocator | None = None,
    scorer: Scorer | None = None,
    with_model: bool = True,
    clock: Callable[[], float] = time.time,
) -> Engine:
    """Assemble the engine: the service's from ``settings``, the offline one without.

    ``store`` and ``geo`` replace what the settings name (offline: an in-memory
    store, the bundled GeoIP data). With settings, ``with_model=False`` loads no
    model and ``scorer`` replaces the settings' model and policy (and their shadow);
    offline, ``scorer`` is the model to decide with, None to compute features only
    (training's replay). ``clock`` stamps challenges (the backtest's is event time).
    """
    # ``is None``, not ``or``: an empty MemoryStore is falsy (it has a length).
    if settings is None:
        return Engine(
            store=MemoryStore() if store is None else store,
            geo=GeoLocator() if geo is None else geo,
            scorer=scorer,
            hasher=Hasher(BACKTEST_SECRET),
            clock=clock,
        )
    if settings.sqlite_path is not None and store is None:
        settings.secure_files(logs=False)
    live: Scorer | None = None
    shadow: Scorer | None = None
    if scorer is not None:
        live = scorer
    elif with_model:
        live, shadow = load_scorers(settings)
    previous = settings.resolve_previous_secret()
    if store is None:
        store = open_store(
            settings.store,
            retention_days=settings.retention_days,
            timeout_s=settings.store_timeout_s,
        )
    if geo is None:
        geo = GeoLocator(
            settings.geoip_city_db,
            asn_db=settings.geoip_asn_db,
            anonymous_db=settings.geoip_anonymous_db,
        )
    return Engine(
        store=store,
        geo=geo,
        scorer=live,
        shadow=shadow,
        hasher=Hasher(settings.resolve_secret()),
        previous_hasher=Hasher(previous) if previous is not None else None,
        challenge_ttl_s=settings.challenge_ttl_s,
        device_trust_days=settings.device_trust_days,
        include_features=settings.include_features,
        clock=clock,
    )
