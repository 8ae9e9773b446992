"""Settings: built once at start-up from RISK_ENGINE_* variables, then injected.

API keys have scopes. Each key is one variable, ``RISK_ENGINE_API_KEY_<NAME>=<scope>:<sha256>``
(what ``risk-engine apikey --scope ...`` prints), so the settings of several keys
combine line by line; the older list ``RISK_ENGINE_API_KEYS_SHA256`` grants ``decide``.

Any other ``RISK_ENGINE_*`` variable stops start-up (``check_environment``): a
misspelled setting would otherwise be ignored and its default used in silence.
Two namespaces are not settings and are let through: ``RISK_ENGINE_TEST_*`` and
``RISK_ENGINE_REQUIRE_*`` (read by the test suite), and the variables applications
give ``risk_engine.client`` (``RISK_ENGINE_URL``, ``RISK_ENGINE_API_KEY``).
"""

from __future__ import annotations

import difflib
import os
import secrets
import stat
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from risk_engine.errors import ConfigurationError
from risk_engine.scopes import GRANTS, Scope

ENV_PREFIX = "RISK_ENGINE_"
KEY_VARIABLE_PREFIX = ENV_PREFIX + "API_KEY_"
# A generated secret has 64 hex characters; anything under 32 is guessable or a typo.
MIN_SECRET_CHARS = 32
# Not settings: the test suite's switches and the client's variables.
IGNORED_PREFIXES = (ENV_PREFIX + "TEST_", ENV_PREFIX + "REQUIRE_")
CLIENT_VARIABLES = frozenset((ENV_PREFIX + "URL", ENV_PREFIX + "API_KEY"))
# Read at import, before any settings: run the compiled core's sources (compiled.py).
IMPORT_VARIABLES = frozenset((ENV_PREFIX + "PURE_PYTHON",))
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


class ApiKey(BaseModel):
    """One configured key: its scope and the sha256 of the key (never the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Scope
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _is_sha256_hex(value):
            raise ValueError("expected the key's sha256 as 64 hex digits")
        return value.lower()


class _KeyVariables(PydanticBaseSettingsSource):
    """``RISK_ENGINE_API_KEY_<NAME>`` variables, collected into ``api_keys`` by NAME."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        keys = {
            name[len(KEY_VARIABLE_PREFIX) :].lower(): value
            for name, value in os.environ.items()
            if name.upper().startswith(KEY_VARIABLE_PREFIX) and len(name) > len(KEY_VARIABLE_PREFIX)
        }
        return {"api_keys": keys} if keys else {}


if TYPE_CHECKING:
    from risk_engine.audit import AuditKey


class Settings(BaseSettings):
    """Everything the operator can set; defaults give the embedded setup."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    store: str = Field(
        default="sqlite:///var/profiles.db",
        description="memory://, sqlite:///path.db, redis://host:port/db or"
        " redis+cluster://host:port",
    )
    geoip_city_db: Path | None = Field(
        default=None, description="GeoIP2/GeoLite2 City database; default: bundled GeoLite2"
    )
    geoip_asn_db: Path | None = None
    geoip_anonymous_db: Path | None = None
    model_path: Path | None = Field(default=None, description="default: the bundled model")
    policy_path: Path | None = Field(default=None, description="default: the bundled policy")
    shadow_model_path: Path | None = None
    shadow_policy_path: Path | None = None
    secret: SecretStr | None = Field(
        default=None,
        description="server secret for hashing ids; default: generated once into"
        " var/secret.key (required with a Redis store or more than one worker)",
    )
    secret_previous: SecretStr | None = Field(
        default=None,
        description="the secret before a rotation: profiles keyed by it are still found,"
        " and moved to the new secret's keys on their next write",
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="key of the audit log's HMAC chain (at least 32 characters);"
        " default: generated once into var/audit.key",
    )
    var_dir: Path = Path("var")
    audit_log: Path | None = Field(default=None, description="default: var/audit.jsonl")
    audit_segment_bytes: Annotated[int, Field(ge=0)] = Field(
        default=256 * 1024 * 1024,
        description="close the audit log as a numbered segment past this size (0: no limit)",
    )
    audit_segment_daily: bool = Field(
        default=True, description="close the audit log as a segment at each new UTC day"
    )
    audit_queue_records: Annotated[int, Field(ge=0, le=65536)] = Field(
        default=256,
        description="audit records a worker holds not yet written, for its writer thread to"
        " append in batches (a crash loses at most these); 0: each record is written"
        " before its response",
    )
    audit_flush_ms: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=5.0,
        description="the audit writer thread appends a batch once its oldest record is this"
        " old (milliseconds)",
    )
    feedback_log: Path | None = Field(default=None, description="default: var/feedback.jsonl")
    decision_log: str = Field(
        default="",
        description="the queryable decision log: sqlite:///path.db or postgresql://...; "
        "default: SQLite at var/decisions.db; 'off' keeps none",
    )
    decision_log_writer: Literal["process", "thread"] = Field(
        default="process",
        description="who writes the decision log: a child process of each worker (default: "
        "it never competes with decisions for the interpreter) or a thread in the worker",
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    auth_disabled: bool = Field(
        default=False, description="serve without API keys: for local development only"
    )
    api_keys_sha256: list[str] = Field(
        default_factory=list,
        description="sha256 hex digests of API keys of scope decide (the older setting)",
    )
    api_keys: dict[str, ApiKey] = Field(
        default_factory=dict,
        description="scoped API keys by name: RISK_ENGINE_API_KEY_<NAME>=<scope>:<sha256>",
    )
    challenge_ttl_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    device_trust_days: Annotated[float, Field(gt=0, le=3650)] = 90.0
    retention_days: Annotated[float, Field(gt=0, le=3650)] = 180.0
    store_timeout_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.05,
        description="the longest a Redis store call may wait (it blocks the event loop);"
        " past it the decision is answered degraded",
    )
    max_body_bytes: Annotated[int, Field(ge=1024, le=10_000_000)] = 65536
    max_drain_bytes: Annotated[int, Field(ge=0, le=100_000_000)] = Field(
        default=8_388_608,
        description="an oversized body is read and discarded up to this many bytes before"
        " the 413, so that the client, still sending, reads it; beyond, the connection closes",
    )
    body_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=5.0,
        description="a request body not complete this long after its headers gets 408 and"
        " its connection closed",
    )
    max_future_skew_s: Annotated[float, Field(ge=0)] = Field(
        default=300.0,
        description="POST /v1/decisions refuses (422, timestamp) an event this far ahead of"
        " the server clock; 0: no bound",
    )
    max_past_skew_s: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="POST /v1/decisions refuses (422, timestamp) an event this far behind"
        " the server clock; 0 (the default): no bound",
    )
    include_features: bool = Field(
        default=False, description="echo per-feature values in every decision"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _KeyVariables(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("api_keys_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if not _is_sha256_hex(digest):
                raise ValueError("each API key entry must be a sha256 hex digest")
        return [d.lower() for d in value]

    @field_validator("api_keys", mode="before")
    @classmethod
    def _scoped_keys(cls, value: Any) -> Any:
        """``scope:sha256`` strings (the variables' form) into entries; errors name the variable."""
        if not isinstance(value, dict):
            return value
        entries: dict[str, Any] = {}
        for name, entry in value.items():
            if isinstance(entry, str):
                scope, _, digest = entry.strip().partition(":")
                variable = KEY_VARIABLE_PREFIX + str(name).upper()
                if scope not in set(Scope) or not _is_sha256_hex(digest):
                    raise ValueError(
                        f"{variable} must be <scope>:<sha256 of the key>, scope one of"
                        f" {', '.join(Scope)}: `risk-engine apikey --scope ...` prints it"
                    )
                entry = {"scope": scope, "sha256": digest}
            entries[str(name).lower()] = entry
        return entries

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings of a start-up: refused if a RISK_ENGINE_* variable is not one."""
        check_environment()
        return cls()

    def effective(self) -> str:
        """Every setting as ``name=value``, secrets and key digests masked, URL passwords out."""
        shown = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "***"
            elif name in ("secret", "audit_key") and value is None:
                text = "(generated)"
            elif name == "api_keys":
                text = "{" + ", ".join(f"{k}: {v.scope.value}" for k, v in value.items()) + "}"
            elif name == "api_keys_sha256":
                text = f"[{len(value)} digest{'' if len(value) == 1 else 's'}]"
            elif name in ("store", "decision_log"):
                text = _redacted(value)
            else:
                text = str(value)
            shown.append(f"{name}={text}")
        return ", ".join(shown)

    @model_validator(mode="after")
    def _auth(self) -> Settings:
        if self.host not in {"127.0.0.1", "localhost", "::1"} and self.auth_disabled:
            raise ValueError("auth_disabled is for local development: bind to 127.0.0.1")
        return self

    @cached_property
    def key_table(self) -> tuple[tuple[str, frozenset[Scope]], ...]:
        """Every accepted digest with the scopes it grants (a digest listed twice: all of them)."""
        table: dict[str, set[Scope]] = {}
        for digest in self.api_keys_sha256:
            table.setdefault(digest, set()).update(GRANTS[Scope.DECIDE])
        for entry in self.api_keys.values():
            table.setdefault(entry.sha256, set()).update(GRANTS[entry.scope])
        return tuple((digest, frozenset(scopes)) for digest, scopes in table.items())

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.var_dir / "audit.jsonl"

    @property
    def feedback_path(self) -> Path:
        return self.feedback_log or self.var_dir / "feedback.jsonl"

    @property
    def decision_log_url(self) -> str | None:
        """Where the decision log is, or None when it is off."""
        if self.decision_log == "off":
            return None
        return self.decision_log or f"sqlite:///{self.var_dir / 'decisions.db'}"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite store's file when the store is one (the forms profiles.factory accepts)."""
        scheme, sep, rest = self.store.partition("://")
        if sep:
            return Path(rest[1:]) if scheme.lower() == "sqlite" and len(rest) > 1 else None
        bare = self.store.lower().endswith((".db", ".sqlite", ".sqlite3"))
        return Path(self.store) if bare else None

    def resolve_secret(self) -> str:
        """The hashing secret: configured, or generated once and kept in var/secret.key.

        An empty or short secret is refused: the keyed hashes of ids and addresses
        would be plain hashes anyone can recompute.
        """
        if self.secret is not None:
            return _strong(self.secret.get_secret_value().strip(), "RISK_ENGINE_SECRET")
        path = self.var_dir / "secret.key"
        try:
            private_dir(self.var_dir)
            try:
                # O_EXCL: created once, private from its first byte, never overwritten.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            except FileExistsError:
                private_file(path)
                return _strong(path.read_text().strip(), str(path))
            value = secrets.token_hex(32)
            with os.fdopen(fd, "w") as handle:
                handle.write(value + "\n")
            return value
        except OSError as exc:
            raise ConfigurationError(f"cannot read or create the secret {path}: {exc}") from exc

    @property
    def shared_store(self) -> bool:
        """Whether the store is one that other processes and machines share (Redis)."""
        scheme = self.store.partition("://")[0].lower()
        return scheme in {"redis", "rediss", "redis+cluster", "rediss+cluster"}

    def require_shared_secret(self) -> None:
        """Refuse a Redis store or several workers without an explicit RISK_ENGINE_SECRET.

        A generated var/secret.key is one machine's: replicas (or workers racing to
        create it) would key every user's profile and burst windows differently.
        """
        if self.secret is not None:
            return
        why = (
            "a Redis profile store"
            if self.shared_store
            else f"--workers {self.workers}"
            if self.workers > 1
            else None
        )
        if why is not None:
            raise ConfigurationError(
                f"{why} needs RISK_ENGINE_SECRET set explicitly, the same on every replica"
                " and worker: the secret generated into var/secret.key is this machine's"
                " alone, and profiles keyed by it are not found by the others",
                field="secret",
            )

    def resolve_previous_secret(self) -> str | None:
        """The secret before a rotation (RISK_ENGINE_SECRET_PREVIOUS), or None."""
        if self.secret_previous is None:
            return None
        previous = _strong(
            self.secret_previous.get_secret_value().strip(), "RISK_ENGINE_SECRET_PREVIOUS"
        )
        if previous == self.resolve_secret():
            raise ConfigurationError(
                "RISK_ENGINE_SECRET_PREVIOUS is the current secret: set RISK_ENGINE_SECRET"
                " to the new one, or unset RISK_ENGINE_SECRET_PREVIOUS once the rotation is over",
                field="secret_previous",
            )
        return previous

    @property
    def audit_key_path(self) -> Path:
        return self.var_dir / "audit.key"

    def resolve_audit_key(self) -> AuditKey:
        """The audit chain's key: configured, or generated once and kept in var/audit.key."""
        # Imported here: the audit module imports the event and decision models.
        from risk_engine.audit import AuditKey, create_key_file

        if self.audit_key is not None:
            return AuditKey(self.audit_key.get_secret_value(), source="RISK_ENGINE_AUDIT_KEY")
        path = self.audit_key_path
        try:
            if not path.exists():
                create_key_file(path)
        except OSError as exc:
            raise ConfigurationError(f"cannot create the audit key {path}: {exc}") from exc
        return AuditKey.from_file(path)

    def secure_files(self, *, logs: bool = True) -> None:
        """Make the var dir 0700 and every file in it 0600, before anything writes there.

        Creates (empty, 0600) the SQLite database and, with ``logs``, the audit and
        feedback logs wherever they are configured, so that they are private from
        the start: SQLite gives its -wal and -shm files the database's mode.
        """
        files = [self.audit_path, self.feedback_path] if logs else []
        if self.sqlite_path is not None:
            files.append(self.sqlite_path)
        try:
            private_dir(self.var_dir)
            for existing in self.var_dir.iterdir():
                if existing.is_file() and not existing.is_symlink():
                    private_file(existing)
            for path in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                private_file(path)
        except OSError as exc:
            where = exc.filename or self.var_dir
            raise ConfigurationError(f"cannot make {where} private: {exc}") from exc


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``RISK_ENGINE_*`` variable that is no setting, naming the closest one.

    Names are matched as pydantic-settings reads them, case-insensitively.
    """
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for variable in sorted(os.environ if environ is None else environ):
        name = variable.upper()
        if (
            not name.startswith(ENV_PREFIX)
            or name in settings
            or name in CLIENT_VARIABLES
            or name in IMPORT_VARIABLES
            or name.startswith(IGNORED_PREFIXES)
            or (name.startswith(KEY_VARIABLE_PREFIX) and len(name) > len(KEY_VARIABLE_PREFIX))
        ):
            continue
        close = _closest(name, settings)
        if close:
            hint = f": did you mean {close}? (unset it or correct its name)"
        else:
            hint = " (no setting has a name like it: the README's Configuration lists them)"
        raise ConfigurationError(f"unknown variable {variable}{hint}", field=variable)


def _closest(name: str, settings: set[str]) -> str | None:
    """The valid name most like ``name``, if any is alike enough.

    A setting first; else a key variable, when all but the last word of ``name`` is
    like ``RISK_ENGINE_API_KEY`` (``RISK_ENGINE_APIKEY_OPS``).
    """
    # RISK_ENGINE_API_KEYS (the keys as one JSON object) works but is never offered.
    offered = sorted(settings - {ENV_PREFIX + "API_KEYS"})
    close = difflib.get_close_matches(name, offered, n=1, cutoff=0.8)
    if close:
        return close[0]
    head = name.rpartition("_")[0]
    if difflib.SequenceMatcher(None, head, KEY_VARIABLE_PREFIX[:-1]).ratio() >= 0.8:
        return KEY_VARIABLE_PREFIX + "<NAME>"
    return None


def _redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _strong(secret: str, where: str) -> str:
    """``secret`` if long enough; else ConfigurationError naming the setting or file."""
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigurationError(
            f"the secret in {where} is {'empty' if not secret else 'too short'}: it needs at"
            f" least {MIN_SECRET_CHARS} random characters (`python -c 'import secrets;"
            " print(secrets.token_hex(32))'` makes one; profiles keyed by the old secret are"
            " then not found again)"
        )
    return secret


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if absent; the directory itself ends up 0700.

    A shared directory (sticky or world-writable, such as /tmp) is refused, not
    taken over: the var dir must be the engine's own.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_ISVTX | stat.S_IWOTH):
        raise ConfigurationError(
            f"RISK_ENGINE_VAR_DIR {path} is a shared directory (mode {mode:o}): give the"
            " engine a directory of its own"
        )
    if mode != PRIVATE_DIR_MODE:
        path.chmod(PRIVATE_DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty if absent; either way it ends up 0600."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
