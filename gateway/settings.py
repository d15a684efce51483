"""The one Settings model: an optional YAML file, then environment overrides.

Environment variables use the `FLUXGATE_` prefix and `__` for nesting
(`FLUXGATE_STORAGE__URL_TTL=600`). With no file at all the embedded default applies: SQLite at
`$FLUXGATE_DATA_DIR/fluxgate.db`, files under `$FLUXGATE_DATA_DIR/files`, in-process rate
limiting and the sandbox upstream serving every model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.datadir import DATA_DIR_ENV, default_data_dir, from_config_file
from gateway.families import Catalogue
from gateway.images.addresses import AllowList
from gateway.models import DEFAULT_ALIASES, MODELS


class ConfigError(Exception):
    """A configuration problem, described in one line that names the field."""


class ChannelSettings(BaseModel):
    """One upstream channel (see config.example.yaml for every type)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal["bfl", "replicate", "fal", "openai", "sandbox", "comfyui", "local_worker"]
    base_url: str | None = None
    api_key_env: str | None = None
    models: list[str] | dict[str, str] | None = None  # None: every model the adapter knows
    priority: int = 0
    weight: int = Field(default=1, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    cost_per_image: float | None = None  # USD, the upstream's own price
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    # routing knobs (gateway/jobs/routing.py): breaker and per-model concurrency caps
    breaker_threshold: int = Field(default=5, ge=1)  # consecutive failures that open it
    breaker_cooldown: float = Field(default=30.0, gt=0)  # seconds open before one probe
    model_concurrency: dict[str, int] = Field(default_factory=dict)  # our model -> cap
    # a result more than 2 % off the asked ratio: centre-crop it, pad it, or serve it as it is
    fit: Literal["pass", "crop", "pad"] = "crop"
    # HTTP connections to this upstream's API; default max_concurrency + headroom for polls
    # (gateway/jobs/connections.py), 1000 when the concurrency is unlimited
    max_connections: int | None = Field(default=None, ge=1)
    # hosts (host, host:port, *.suffix, IP, CIDR, [v6]:port) whose result URLs may be fetched
    # despite the address policy, besides the channel's own host:port and its type's documented
    # hosts (BFL: *.bfl.ai); every other result URL must be public, on port 80/443
    result_hosts: list[str] = Field(default_factory=list)

    @field_validator("result_hosts")
    @classmethod
    def _valid_hosts(cls, v: list[str]) -> list[str]:
        AllowList.parse(v, setting="result_hosts")  # raises ValueError naming the entry
        return v

    def model_map(self) -> dict[str, str]:
        """Our model name -> the upstream's, for the models this channel serves."""
        if isinstance(self.models, dict):
            return dict(self.models)
        return {m: m for m in self.models or []}


class S3Settings(BaseModel):
    """An S3-compatible bucket (AWS S3, MinIO, Cloudflare R2...). Secrets only by env var name."""

    model_config = ConfigDict(extra="forbid")

    bucket: str | None = None  # required with storage.kind s3
    prefix: str = ""  # key prefix inside the bucket, e.g. "fluxgate/"
    region: str | None = None  # default: the AWS SDK's (AWS_REGION / AWS_DEFAULT_REGION...)
    endpoint_url: str | None = None  # MinIO, R2, ...; default: AWS S3
    access_key_env: str | None = None  # env var holding the access key id
    secret_key_env: str | None = None  # env var holding the secret key
    addressing_style: Literal["auto", "virtual", "path"] = "auto"  # "path" for most MinIO
    probe: bool = True  # at start, write and delete a test object: a bad bucket stops start-up

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if v and any(part in ("", ".", "..") for part in v.split("/")):
            raise ValueError("prefix must be '/'-separated names without '.', '..' or '//'")
        return v

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> S3Settings:
        if bool(self.access_key_env) != bool(self.secret_key_env):
            raise ValueError("access_key_env and secret_key_env must be set together "
                             "(or neither, for the AWS SDK's default credential chain)")
        return self


class StorageSettings(BaseModel):
    """Where re-hosted files live and how their URLs are signed."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "s3"] = "local"
    path: Path | None = None  # local: default $data_dir/files
    s3: S3Settings = Field(default_factory=S3Settings)  # kind s3: the bucket
    url_ttl: int = Field(default=7 * 24 * 3600, ge=60)  # seconds a signed file URL stays valid
    signing_secret: str | None = None  # default: generated once into $data_dir/secret.key
    # seconds between orphan sweeps (gateway/storage/sweep.py); 0 = off
    sweep_interval: float = Field(default=3600.0, ge=0)
    # an object or file row is an orphan only once it is this old (seconds); the sweep never
    # uses less than jobs.deadline + jobs.download_timeout (gateway/storage/sweep.py)
    sweep_grace: float = Field(default=3600.0, ge=60)

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> StorageSettings:
        if self.kind == "s3" and not self.s3.bucket:
            raise ValueError("storage.s3.bucket is required when storage.kind is s3")
        return self


class JobSettings(BaseModel):
    """Timings of the job lifecycle, in seconds."""

    model_config = ConfigDict(extra="forbid")

    deadline: float = Field(default=600.0, gt=0)  # a job not done by then fails (stuck upstream)
    poll_initial: float = Field(default=0.5, gt=0)
    poll_max: float = Field(default=5.0, gt=0)
    # polls per second this process sends at most, all jobs together (a poll costs ~1.5 ms
    # of CPU): with many jobs in flight each waits longer between polls (1,000 jobs: one
    # poll each 10 s), so waiting jobs leave the CPU to new requests; raise it with more CPU
    poll_rate: float = Field(default=100.0, gt=0)
    # the whole submit call; None = each adapter's own (a synchronous OpenAI-compatible
    # upstream holds the request for minutes, a queue upstream answers in seconds)
    submit_timeout: float | None = Field(default=None, gt=0)
    # jobs running in this process at most; past it, creating calls get 503 + Retry-After
    max_in_flight: int = Field(default=10_000, ge=1)
    download_timeout: float = Field(default=30.0, gt=0)
    sync_wait: float = Field(default=600.0, gt=0)  # how long a synchronous call waits
    submit_rounds: int = Field(default=3, ge=1, le=10)  # offers to every channel when throttled
    submit_backoff_max: float = Field(default=30.0, gt=0)  # longest wait between rounds
    # Replicas sharing one database: a job belongs to the process running it while its lease
    # holds (renewed every lease/3); a job whose lease passed (its runner crashed) is adopted by
    # whichever replica looks first, every `adopt_interval` (default: lease / 2).
    lease: float = Field(default=30.0, gt=0)
    adopt_interval: float | None = Field(default=None, gt=0)

    @property
    def adopt_every(self) -> float:
        """Seconds between two looks for jobs whose lease has passed."""
        return self.adopt_interval if self.adopt_interval is not None else self.lease / 2
    # how often each replica re-reads stored channel disables (upstream 401/402/403, admin)
    channel_sync_interval: float = Field(default=5.0, ge=0)


class DatabaseSettings(BaseModel):
    """The connection pool (PostgreSQL, and SQLite's file database)."""

    model_config = ConfigDict(extra="forbid")

    pool_size: int = Field(default=20, ge=1)
    max_overflow: int = Field(default=30, ge=0)
    # how long a request waits for a connection; then 503 with Retry-After, never a 500
    pool_timeout: float = Field(default=30.0, gt=0)


class PromptLimits(BaseModel):
    """The longest prompt, in characters (Unicode code points), per API family."""

    model_config = ConfigDict(extra="forbid")

    openai: int = Field(default=32_000, ge=1)  # images + chat: OpenAI's gpt-image-1 limit
    bfl: int = Field(default=10_000, ge=1)  # BFL documents none; Kontext reads ~512 tokens
    replicate: int = Field(default=10_000, ge=1)  # Replicate documents none either

    def for_surface(self, surface: str) -> int:
        """The limit of a job surface (`openai.images`, `openai.chat`, `bfl`, `replicate`)."""
        family = surface.partition(".")[0]
        return int(getattr(self, family, self.openai))


class LimitSettings(BaseModel):
    """Input limits."""

    model_config = ConfigDict(extra="forbid")

    max_prompt_chars: PromptLimits = Field(default_factory=PromptLimits)
    max_input_images: int = Field(default=4, ge=1, le=8)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=20_000_000, ge=1024)
    #: pixels decoded at once across all requests (bounded memory; see images/budget.py)
    decode_pixel_budget: int = Field(default=100_000_000, ge=1024)
    decode_wait: float = Field(default=5.0, ge=0)  # s a decode waits for budget, then 503
    fetch_timeout: float = Field(default=20.0, gt=0)
    # hosts/CIDRs (optionally host:port, [v6]:port) allowed despite the SSRF rules
    fetch_allow: list[str] = Field(default_factory=list)
    # Shared rate limits (redis_url): how long a Redis call may take, how long to stay on the
    # in-process fallback after a failure, and how many replicas share the limit (the fallback
    # allows rpm / replicas in each, so an outage never multiplies a key's limit).
    rate_limit_timeout: float = Field(default=0.25, gt=0)
    rate_limit_cooldown: float = Field(default=5.0, ge=0)
    replicas: int = Field(default=1, ge=1)


#: Standard Webhooks' example schedule: the delay before each attempt (seconds), ~75.5 h in all
DEFAULT_WEBHOOK_SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0,
                            72000.0, 86400.0]


class WebhookSettings(BaseModel):
    """Outbound result webhooks (gateway/webhooks): timing and the gateway-wide secret."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # run the delivery worker in this process
    timeout: float = Field(default=15.0, gt=0, le=120)  # whole attempt; 2xx within it = success
    schedule: list[float] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_SCHEDULE),
                                  min_length=1)  # delay before attempt 1, 2, ...
    jitter: float = Field(default=0.1, ge=0, lt=1)  # +-share applied to every delay
    max_retry_after: float = Field(default=86400.0, gt=0)  # cap on a receiver's Retry-After
    poll_interval: float = Field(default=1.0, gt=0)  # how often the worker looks for due rows
    lease: float = Field(default=60.0, gt=0)  # a claimed attempt's lease (> timeout)
    # attempts in flight at once in this process, in all ("batch": its former name)
    max_in_flight: int = Field(default=64, ge=1, le=1000,
                               validation_alias=AliasChoices("max_in_flight", "batch"))
    # attempts in flight at once to one endpoint (scheme + host + port of the URL)
    per_endpoint: int = Field(default=4, ge=1, le=1000)
    secret: str | None = None  # whsec_...; default: generated once into $data_dir/webhook.key

    @field_validator("schedule")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(d < 0 for d in v):
            raise ValueError("schedule delays must be >= 0 seconds")
        return v


DEFAULT_PRICES_USD: dict[str, float | dict[str, float]] = {
    "flux-kontext-pro": 0.04, "flux-kontext-max": 0.08, "flux-kontext-dev": 0.025}


class ChatSettings(BaseModel):
    """How `POST /v1/chat/completions` streams (seconds)."""

    model_config = ConfigDict(extra="forbid")

    # `: ping` comment while a job runs (chat streams and image streams alike)
    keepalive: float = Field(default=5.0, gt=0, le=60)
    progress: bool = False  # short progress lines in the answer (they stay in chat history)


class BillingSettings(BaseModel):
    """Currency and prices (USD per image unless `currency` says otherwise)."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "USD"
    # per image; or a mapping with per_image / per_megapixel / generate / edit keys
    prices: dict[str, float | dict[str, float]] = Field(default_factory=lambda: dict(
        DEFAULT_PRICES_USD))
    price_groups: dict[str, float] = Field(default_factory=dict)
    moderation_fee: float = Field(default=0.0, ge=0)
    # how often Idempotency-Key rows past their 24 h retention are deleted (seconds; 0 = never)
    idempotency_purge_interval: float = Field(default=3600.0, ge=0)

    @model_validator(mode="after")
    def _prices_are_valid(self) -> BillingSettings:
        from billing.pricing import PriceTable

        PriceTable.from_config(self.prices, self.price_groups)  # raises ValueError
        return self


class SigningSettings(BaseModel):
    """The C2PA signing identity (`provenance: signed`): a certificate chain and either its
    private key or a command that signs (a KMS/HSM hook: the digest on stdin, the signature,
    DER or raw, on stdout). Paths are read once at start-up."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = None  # PEM chain, end-entity certificate first
    key_file: Path | None = None  # PEM private key (PKCS#8)
    sign_command: list[str] | None = None  # instead of key_file: argv of the signing hook
    command_input: Literal["digest", "message"] = "digest"  # what the command gets on stdin
    alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    tsa_url: str | None = None  # RFC 3161 time-stamp authority (none: no trusted time)

    @model_validator(mode="after")
    def _key_or_command(self) -> SigningSettings:
        if self.cert_file is not None and (self.key_file is None) == (self.sign_command is None):
            raise ValueError("with cert_file, give exactly one of key_file or sign_command")
        if self.cert_file is None and (self.key_file or self.sign_command):
            raise ValueError("key_file and sign_command need cert_file")
        return self


class ProvenanceSettings(BaseModel):
    """What every result carries about its origin (README, "Provenance")."""

    model_config = ConfigDict(extra="forbid")

    # off | metadata (IPTC digital source type in XMP) | signed (metadata + C2PA manifest)
    default: Literal["off", "metadata", "signed"] = "metadata"
    # per price group (a key's own setting wins over its group's)
    price_groups: dict[str, Literal["off", "metadata", "signed"]] = Field(default_factory=dict)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    # PEM file of CA certificates `fluxgate verify` and /files/{id}/credentials trust
    trust_anchors_file: Path | None = None


def _default_aliases() -> dict[str, str]:
    return dict(DEFAULT_ALIASES)


class TracingSettings(BaseModel):
    """OpenTelemetry tracing (needs `pip install 'fluxgate[otel]'`; gateway/tracing.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # a span per request and per job stage; traceparent sent upstream
    # OTLP/HTTP endpoint, e.g. http://otel-collector:4318/v1/traces; None: the exporter's own
    # default from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, and no
    # export at all when neither is set
    otlp_endpoint: str | None = None
    service_name: str = "fluxgate"
    sample_ratio: float = Field(default=1.0, ge=0, le=1)  # of new traces (parents' choice kept)


class Settings(BaseSettings):
    """Every setting of fluxgate. Build it with `load_settings()`."""

    model_config = SettingsConfigDict(env_prefix="FLUXGATE_", env_nested_delimiter="__",
                                      extra="forbid")

    # see gateway/datadir.py: FLUXGATE_DATA_DIR, else the config file's (relative to it), else
    # the per-user data folder (~/.local/share/fluxgate); always made absolute
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default sqlite+aiosqlite:///$data_dir/fluxgate.db
    auto_migrate: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_base_url: str | None = None  # default http://{host}:{port}
    # seconds an idle client connection is kept open. Longer than the clients' own pool expiry
    # (httpx, hence the openai SDKs: 5 s; Node's agent: 5 s) and than a load balancer's idle
    # timeout (AWS ALB 60 s): with both at 5 s, as uvicorn's default, a client reusing a
    # connection as the server closes it gets a reset on a request it already sent
    keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    redis_url: str | None = None
    admin_token: str | None = None
    # GET /metrics wants `Authorization: Bearer $<this variable>`; unset: loopback clients only
    metrics_token_env: str | None = None
    log_level: str = "INFO"
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # answer Chrome's Private Network Access preflights (a public web page calling a gateway on
    # localhost or the LAN) for the origins above
    cors_private_network: bool = True
    # other model names accepted for a model (name -> flux-kontext-pro|max|dev), listed in
    # /v1/models; replaces the default mapping (OpenAI's gpt-image-1, dall-e-3...); {} = none
    model_aliases: dict[str, str] = Field(default_factory=_default_aliases)
    # Peers (IPs or CIDRs, or "*") whose X-Forwarded-For / X-Forwarded-Proto are believed: the
    # client address they name is what key IP allow-lists and logs see. Others' are ignored.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    channels: list[ChannelSettings] = Field(default_factory=list)
    sandbox: dict[str, Any] = Field(default_factory=dict)  # options of the default sandbox
    storage: StorageSettings = Field(default_factory=StorageSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    # models added to (or changed in) the built-in catalogue: id -> {family: kontext|flux2|
    # flux3, description, aliases, max_refs, bfl_route, price} (see gateway/families.py)
    catalogue: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    # "text" (one readable line) or "json" (one JSON object per line, for log shippers); both
    # carry request_id, job_id and channel; never keys, secrets or images
    log_format: Literal["text", "json"] = "text"
    log_prompts: bool = False  # job log lines include the prompt (first 200 characters)

    #: where `data_dir` came from, in words (set by `load_settings`)
    _data_dir_origin: str = PrivateAttr(default="the default for this user")
    _catalogue: Catalogue | None = PrivateAttr(default=None)

    @property
    def data_dir_origin(self) -> str:
        return self._data_dir_origin

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @field_validator("model_aliases")
    @classmethod
    def _aliases_name_models(cls, v: dict[str, str]) -> dict[str, str]:
        ids = [m.id for m in MODELS]
        for alias, target in v.items():
            if target not in ids:
                raise ValueError(f"alias {alias!r} names {target!r}, not one of {', '.join(ids)}")
        return v

    @field_validator("catalogue")
    @classmethod
    def _catalogue_is_valid(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        Catalogue.extended(v)  # raises ValueError naming the entry
        return v

    def model_catalogue(self) -> Catalogue:
        """The built-in model catalogue plus `catalogue` (built once per settings object)."""
        if self._catalogue is None:
            self._catalogue = Catalogue.extended(self.catalogue)
        return self._catalogue

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env wins over the YAML file, which arrives as init kwargs
        return (env_settings, init_settings)

    # derived values -------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'fluxgate.db'}"

    @property
    def files_dir(self) -> Path:
        return self.storage.path or self.data_dir / "files"

    @property
    def resolved_public_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def _env_names(field: str) -> list[str]:
    """The FLUXGATE_ variables set for a top-level `field` (itself or nested under it)."""
    name = f"FLUXGATE_{field.upper()}"
    return sorted(k for k in os.environ if k.upper() == name or k.upper().startswith(name + "__"))


def _first_error_line(exc: ValidationError, file: str | None, overrides: dict[str, Any]) -> str:
    """The first error, naming the field and where its value came from: the command line
    (`overrides`), an environment variable, or the config file."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or "(root)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    env = _env_names(loc[0]) if loc else []
    if env:
        source = f"environment variable {env[0]}"
    elif loc and loc[0] in overrides:
        source = "the command line"
    elif file:
        source = file
    else:
        source = "the defaults"
    return f"invalid configuration in {source}: {field}: {err['msg']}{more}"


def _data_dir_origin(data: dict[str, Any], file: str | None, overrides: dict[str, Any]) -> str:
    if any(k.upper() == DATA_DIR_ENV for k in os.environ):  # as pydantic-settings reads it
        return DATA_DIR_ENV
    if "data_dir" in overrides:
        return "the caller's settings"
    if "data_dir" in data:
        return f"the config file {file}"
    return "the default for this user"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (or `$FLUXGATE_CONFIG`, if set), the environment and
    `overrides`. Raises ConfigError with one line naming the bad field."""
    path = config_file or os.environ.get("FLUXGATE_CONFIG")
    data: dict[str, Any] = {}
    source = "environment"
    if path:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
        if "data_dir" in data and data["data_dir"] is None:  # written out as the default
            del data["data_dir"]
        if data.get("data_dir") and isinstance(data["data_dir"], str | os.PathLike):
            data["data_dir"] = from_config_file(data["data_dir"], Path(path))
    origin = _data_dir_origin(data, source if path else None, overrides)
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc, source if path else None, overrides)) from exc
    settings._data_dir_origin = origin
    return settings
