"""Service settings, validated once at start-up from ``SLIMSERVE_*`` environment variables.

``Settings`` is a pydantic-settings ``BaseSettings``: each field is read from
``SLIMSERVE_<FIELD>`` (``SLIMSERVE_MAX_BATCH_SIZE=16``); an empty variable counts as unset;
``SLIMSERVE_MODELS`` is comma-separated. ``Settings(**values)`` takes keyword values over the
environment; :meth:`Settings.from_env` reads one environment (``os.environ`` or a mapping given
to it) and reports a bad value by the variable's name::

    >>> Settings.from_env({"SLIMSERVE_MAX_BATCH_SIZE": "zero"})
    Traceback (most recent call last):
    ValueError: SLIMSERVE_MAX_BATCH_SIZE: Input should be a valid integer, unable to parse
    string as an integer (got 'zero')
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from service.home import DEFAULT_HOME

ENV_PREFIX = "SLIMSERVE_"
# The mapping Settings.from_env(environ) reads instead of os.environ (None: os.environ).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("slimserve_environ", default=None)


class Settings(BaseSettings):
    """Everything the service reads from its environment (``SLIMSERVE_<FIELD>``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True
    )

    home: Path = Field(
        default_factory=lambda: DEFAULT_HOME,
        description="Data directory: BentoML model store, active pointers, job work dirs, caches.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["digits-cnn", "minilm"],
        description="Model sources to serve (comma-separated in the environment).",
    )
    profile: str = Field("auto", description="auto, gpu, cpu, edge or a profile YAML path.")
    profiles_dir: Path | None = Field(None, description="Directory of extra profile YAML files.")
    admin_token: str | None = Field(
        None, description="Bearer token of the admin API; unset = refused."
    )
    auto_compress: bool = Field(
        True, description="Compress every model in the background at start."
    )
    calibration: str = Field(
        "builtin",
        description="builtin: the model's shipped data; live: a reservoir of real requests.",
    )
    live_min_samples: int = Field(64, ge=8, description="Live samples needed before compressing.")
    reservoir_size: int = Field(512, ge=8, description="Live request inputs kept (reservoir).")
    workers: int = Field(1, ge=1, description="BentoML worker processes (scale with replicas).")
    threads: int | None = Field(
        None,
        ge=1,
        description="Most torch threads a forward uses (default: available cores / workers, "
        "cgroup quota included); models lighter than their HTTP handling use one.",
    )
    job_threads: int = Field(1, ge=1, description="torch threads of a compression job process.")
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="Largest micro-batch one forward runs (default: 32 on CPU, 256 on CUDA).",
    )
    device: str = Field(
        "auto", description="Where models serve: auto (CUDA when present), cpu, cuda or cuda:N."
    )
    pack_originals: bool = Field(
        True,
        description="On a CPU, serve a BERT-family original on its real tokens only (no padding "
        "computed) where that reproduces the padded forward; false: padded, as loaded.",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a request waits for a batch to fill; only under load (the last "
        "batch held more than one request), so a lone client never waits.",
    )
    queue_size: int = Field(2048, ge=1, description="Requests queued per model before 503.")
    max_rows_per_request: int = Field(
        512,
        ge=1,
        description="Most rows (samples) one request may hold (413 beyond); larger requests "
        "than max_batch_size are split into micro-batches.",
    )
    max_body_bytes: int = Field(
        8 << 20,
        ge=1024,
        description="Largest accepted request body, on every route; counted while it streams in "
        "(413 as soon as it is over, before parsing).",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers must arrive within this (408 and close)."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="A request's body must arrive within this after its headers."
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol v2 over gRPC (Triton's default 8001), "
        "beside HTTP on the same data plane; 0 turns it off.",
    )
    max_connections: int = Field(
        1024, ge=1, description="Connections open at once per worker; one more is refused (503)."
    )
    job_timeout_s: float | None = Field(
        None, gt=0, description="Overrides the profile's time limit."
    )
    poll_s: float = Field(2.0, gt=0, description="How often a worker re-reads the active pointers.")
    max_variants: int = Field(
        3,
        ge=1,
        description="Compressed variants kept per model; older ones are deleted after each job "
        "(never the active one nor the one a rollback returns to).",
    )
    max_job_s: float = Field(
        3600.0, gt=0, description="Longest a compression job may run, whatever its profile says."
    )
    min_free_bytes: int = Field(
        256 << 20,
        ge=0,
        description="Free space the variant store keeps: a job or a variant that would leave "
        "less is refused (507) and what serves keeps serving.",
    )
    metrics_dir: Path | None = Field(
        None,
        description="Prometheus multiprocess directory, on a volume of its own (an emptyDir in "
        "k8s): default a fresh directory in /dev/shm or the temp dir, never the home (a full "
        "home would kill the worker with SIGBUS).",
    )
    shadow_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of served batches the original (or a canary) also runs on, off the "
        "request path, to measure live fidelity; 0 turns shadow evaluation off.",
    )
    shadow_max_per_second: float = Field(
        20.0, gt=0, description="Most shadowed batches a second per worker (a rate cap)."
    )
    shadow_window: int = Field(
        256, ge=8, description="Live samples in the sliding window of live fidelity."
    )
    shadow_min_samples: int = Field(
        64, ge=1, description="Live samples needed before a canary is promoted or rolled back."
    )
    canary: bool = Field(
        True,
        description="An accepted variant first runs in shadow and serves only once its live "
        "fidelity holds for shadow_min_samples; false: it serves at once.",
    )
    live_min_agreement: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Lowest live top-1 agreement of a classifier's variant with its original "
        "(embeddings use the variant's verified cosine budget).",
    )
    live_hysteresis: float = Field(
        0.01,
        ge=0.0,
        le=0.5,
        description="A serving variant is rolled back only below its live budget minus this.",
    )
    variant_cache: str | None = Field(
        None,
        description="Store shared by the replicas of a fleet: a directory (e.g. a "
        "ReadWriteMany claim) or s3://bucket/prefix (boto3's credentials and AWS_ENDPOINT_URL). "
        "Accepted variants keyed by model content, profile, hardware and torch version, and a "
        "lease per key so that one replica compresses for all.",
    )
    jobs: bool = Field(
        True,
        description="This replica compresses (for itself, or for the fleet when it holds the "
        "lease); false: it never gives its cores to a compression and serves what the fleet's "
        "worker publishes to SLIMSERVE_VARIANT_CACHE.",
    )
    lease_ttl_s: float = Field(
        60.0,
        ge=3.0,
        description="A fleet lease expires this long after its holder's last renewal (it renews "
        "every third of it); a holder that died is replaced after at most this.",
    )
    fleet_poll_s: float = Field(
        5.0,
        gt=0.0,
        description="How often a replica waiting on the fleet looks for the published variant.",
    )
    cache_key: SecretStr | None = Field(
        None,
        description="Secret shared by the replicas of a variant cache: every entry they publish "
        "carries an HMAC-SHA256 of its files under this key, and an entry without a valid one "
        "is refused (unset: entries are checked against their own checksums only).",
    )
    access_log: bool = Field(False, description="BentoML's access log line for every request.")
    trace_inference: bool = Field(
        False, description="OpenTelemetry spans for inference requests (BentoML tracing)."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("variant_cache", mode="before")
    @classmethod
    def _store(cls, value):
        return str(value) if isinstance(value, Path) else value

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, value: str) -> str:
        if value not in ("builtin", "live"):
            raise ValueError(f"expected 'builtin' or 'live', got {value!r}")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``SLIMSERVE_*`` variables of ``environ`` (default ``os.environ``) and nothing else.

        Raises ``ValueError`` naming the variable, e.g. ``SLIMSERVE_MAX_BATCH_SIZE: ...``.
        """
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as err:
            first = err.errors()[0]
            key = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "settings"
            raise ValueError(f"{key}: {first['msg']} (got {first.get('input')!r})") from None
        except SettingsError as err:
            raise ValueError(f"{ENV_PREFIX}*: {err}") from None
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword values, then the environment (``os.environ``, or from_env's mapping)."""
        environ = _ENVIRON.get()
        env = env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
        return (init_settings, env)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )
