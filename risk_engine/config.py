"""Settings: built once at start-up from RISK_ENGINE_* variables, then injected."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from risk_engine.errors import ConfigurationError

if TYPE_CHECKING:
    from risk_engine.audit import AuditKey


class Settings(BaseSettings):
    """Everything the operator can set; defaults give the embedded setup."""

    model_config = SettingsConfigDict(env_prefix="RISK_ENGINE_", extra="forbid")

    store: str = Field(
        default="sqlite:///var/profiles.db",
        description="memory://, sqlite:///path.db or redis://host:port/db",
    )
    geoip_city_db: Path | None = Field(
        default=None, description="GeoIP2/GeoLite2 City database; default: bundled GeoLite2"
    )
    geoip_asn_db: Path | None = None
    geoip_anonymous_db: Path | None = None
    model_path: Path | None = Field(default=None, description="default: models/default.npz")
    policy_path: Path | None = Field(default=None, description="default: the bundled policy")
    shadow_model_path: Path | None = None
    shadow_policy_path: Path | None = None
    secret: SecretStr | None = Field(
        default=None,
        description="server secret for hashing ids; default: generated once into var/secret.key",
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="key of the audit log's HMAC chain (at least 32 characters);"
        " default: generated once into var/audit.key",
    )
    var_dir: Path = Path("var")
    audit_log: Path | None = Field(default=None, description="default: var/audit.jsonl")
    feedback_log: Path | None = Field(default=None, description="default: var/feedback.jsonl")
    decision_log: str = Field(
        default="",
        description="the queryable decision log: sqlite:///path.db or postgresql://...; "
        "default: SQLite at var/decisions.db; 'off' keeps none",
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    auth_disabled: bool = Field(
        default=False, description="serve without API keys: for local development only"
    )
    api_keys_sha256: list[str] = Field(
        default_factory=list, description="sha256 hex digests of the accepted API keys"
    )
    challenge_ttl_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    device_trust_days: Annotated[float, Field(gt=0, le=3650)] = 90.0
    retention_days: Annotated[float, Field(gt=0, le=3650)] = 180.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=10_000_000)] = 65536
    include_features: bool = Field(
        default=False, description="echo per-feature values in every decision"
    )

    @field_validator("api_keys_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError("each API key entry must be a sha256 hex digest")
        return [d.lower() for d in value]

    @model_validator(mode="after")
    def _auth(self) -> Settings:
        if self.host not in {"127.0.0.1", "localhost", "::1"} and self.auth_disabled:
            raise ValueError("auth_disabled is for local development: bind to 127.0.0.1")
        return self

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

    def resolve_secret(self) -> str:
        """The hashing secret: configured, or generated once and kept in var/secret.key."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        path = self.var_dir / "secret.key"
        try:
            if path.is_file():
                return path.read_text().strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            value = secrets.token_hex(32)
            path.write_text(value + "\n")
            path.chmod(0o600)
            return value
        except OSError as exc:
            raise ConfigurationError(f"cannot read or create the secret {path}: {exc}") from exc

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
