"""The serving configuration: models offered, tenants and their quotas, admission and Serve options.

One typed tree, validated once when the app is built (`build_app`), then handed to every
deployment and actor. API keys are `SecretStr` so they never show in a repr or a log. Keys from the environment:
deployments/config_keys.py.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from deployments.naming import DEFAULT_APP_NAME, default_recording_uri
from helios.media.storage import open_uri
from helios.models.limits import SessionLimits
from helios.runtime.ratelimit import RateLimitSpec

logger = logging.getLogger(__name__)

API_KEYS_ENV = "HELIOS_API_KEYS"
"""Environment variable with extra keys, `tenant:key,tenant:key`."""

ADMIN_KEYS_ENV = "HELIOS_ADMIN_KEYS"
"""Environment variable with extra admin keys, `key,key` (the admin API, /v1/admin/...)."""


TINY_STREAM = {"height": 128, "width": 128, "pyramid_steps": [1, 1, 1]}
"""Stream settings of the tiny preset (the tiny checkpoint's own default is the full 384x640)."""


MIN_API_KEY_CHARS = 16
"""Default shortest API key accepted (`min_api_key_chars`)."""


def key_digest(key: str) -> str:
    """SHA-256 of an API key (hex): all the server keeps of a key once the config is prepared."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class _Strict(BaseModel):
    # hide_input_in_errors: a validation error must never print the input (it holds API keys).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ModelSpec(_Strict):
    """One model a session can ask for by name."""

    kind: Literal["helios", "test-pattern"] = Field(
        "helios", description="'helios': the Helios DiT on a TP shard group; 'test-pattern': the runtime's synthetic model (no group)."
    )
    preset: Literal["tiny"] | None = Field(
        None, description="'tiny': a random-weight tiny Helios generated into the cache folder on first start (never downloaded)."
    )
    path: str | None = Field(None, description="Folder of a diffusers-format Helios pipeline; wins over `preset`.")
    tp_size: int = Field(1, ge=1, le=64, description="Tensor-parallel ranks per shard group (one GPU each on GPU).")
    pool_size: int = Field(
        1, ge=1, le=1024,
        description="Warm shard groups (or, for test-pattern, concurrent session slots); with neither `min_groups` nor "
        "`max_groups` set, the pool is fixed at this size (docs/pool.md).",
    )
    min_groups: int | None = Field(
        None, ge=0, le=1024,
        description="Fewest shard groups kept (free or leased); unset: `pool_size`, or min(pool_size, max_groups) when "
        "`max_groups` is set.",
    )
    max_groups: int | None = Field(
        None, ge=1, le=1024,
        description="Most shard groups (free, leased and building); unset: `pool_size`, or max(pool_size, min_groups). "
        "For test-pattern: its session slots.",
    )
    headroom: int = Field(
        1, ge=0, le=1024,
        description="Free warm groups kept ready beyond the leased ones (and one more per queued session), within "
        "min_groups..max_groups: the next session is admitted without a model load.",
    )
    scale_down_delay_s: float = Field(
        300.0, ge=0, description="A free group idle longer than this is destroyed while the pool is above its target (never a leased one)."
    )
    gpus_per_worker: float | None = Field(
        None, ge=0,
        description="GPUs per shard worker (placement-group bundle); unset: 1 on device 'cuda', 0 on 'cpu'. On 'cpu' a "
        "value > 0 reserves logical GPUs (how CPU test clusters declare GPU bundles).",
    )
    placement_timeout_s: float = Field(
        900.0, gt=0,
        description="Longest wait for a new group's placement group (a node for its bundles, which the Ray autoscaler may "
        "be adding); then it is removed, logged, and asked for again after a back-off while still needed.",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the shard workers run.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights and activation dtype.")
    lookahead: int = Field(1, ge=0, le=16, description="Chunks the generator may run ahead of real-time playback.")
    pacing: Literal["realtime", "off"] = Field(
        "realtime",
        description="Benchmark-only: 'off' releases every chunk the moment it is generated (no real-time playback, no "
        "just-in-time starts), to measure serving overhead against the bare pipeline (bench/bench_serve.py). Never serve "
        "viewers with it.",
    )
    cpus_per_worker: float = Field(0.5, ge=0, description="Ray CPUs reserved per shard worker (bundle size).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments: pipeline `from_pretrained` overrides (helios) or TestPatternModel arguments.",
    )
    description: str = Field("", description="Shown by GET /v1/models.")
    limits: SessionLimits = Field(default_factory=SessionLimits, description="Per-session limits (docs/limits.md).")

    def pipeline_overrides(self) -> dict[str, Any]:
        """`from_pretrained` overrides: the tiny preset's stream settings, then `options`."""
        base = dict(TINY_STREAM) if self.preset == "tiny" and not self.path else {}
        return {**base, **self.options}

    def group_bounds(self) -> tuple[int, int]:
        """(min_groups, max_groups) as resolved from the fields set: `pool_size` fills in whichever is unset.

        Resolved at use, not stored, so a `model_copy(update={"pool_size": n})` keeps meaning a pool of n.
        """
        if self.min_groups is None and self.max_groups is None:
            return self.pool_size, self.pool_size
        if self.min_groups is None:
            return min(self.pool_size, self.max_groups), self.max_groups
        if self.max_groups is None:
            return self.min_groups, max(self.pool_size, self.min_groups)
        return self.min_groups, self.max_groups

    def worker_gpus(self) -> float:
        """GPUs per shard worker (bundle): `gpus_per_worker`, else 1 on cuda and 0 on cpu."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if self.device == "cuda" else 0.0

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.kind == "helios" and not (self.path or self.preset):
            raise ValueError("model of kind 'helios' needs `path` or `preset`")
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("dtype 'float16' is not supported on device 'cpu'; use float32 or bfloat16")
        low, high = self.group_bounds()
        if low > high:
            raise ValueError(f"min_groups ({low}) must be <= max_groups ({high})")
        if self.headroom > high:
            raise ValueError(f"headroom ({self.headroom}) must be <= max_groups ({high})")
        if self.device == "cuda" and self.gpus_per_worker == 0:
            raise ValueError("gpus_per_worker: must be > 0 on device 'cuda' (each rank needs a GPU)")
        return self


class QuotaSpec(_Strict):
    """Per-tenant limits."""

    max_concurrent_sessions: int = Field(2, ge=0, description="Sessions a tenant may hold at once (active + queued).")
    max_session_s: float = Field(3600.0, gt=0, description="A session ends with reason 'time_limit' after this many seconds.")
    command_rate: RateLimitSpec = Field(
        default_factory=RateLimitSpec, description="Commands per session: token bucket (rate_per_s, burst); over it 429 / WS error."
    )
    max_streams: int = Field(
        128, ge=0, description="Video streams (any format, viewer tokens included) open at once on this tenant's sessions; beyond: 429."
    )
    max_event_streams: int = Field(
        128, ge=0, description="SSE and WebSocket connections open at once on this tenant's sessions; beyond: 429."
    )


def _check_digests(digests: list[str], name: str) -> list[str]:
    for i, d in enumerate(digests):
        if not re.fullmatch(r"[0-9a-f]{64}", d):
            raise ValueError(f"{name}[{i}]: not a lowercase hex SHA-256 digest (64 characters)")
    return digests


class TenantSpec(_Strict):
    """A tenant: its API keys and quota."""

    name: str = Field(..., min_length=1, max_length=64, description="Tenant name (shown in metrics, never a key).")
    api_keys: list[SecretStr] = Field(default_factory=list, description="Bearer keys that authenticate as this tenant.")
    api_key_digests: list[str] = Field(
        default_factory=list,
        description="SHA-256 (hex) of further keys: lets a config file hold no key at all. `prepare_config` turns every "
        "`api_keys` entry into one of these, so the running server keeps digests only.",
    )

    @field_validator("api_key_digests")
    @classmethod
    def _hex(cls, digests: list[str]) -> list[str]:
        return _check_digests(digests, "api_key_digests")
    quota: QuotaSpec | None = Field(None, description="Limits; the config's `default_quota` when absent.")


class AutoscalingSpec(_Strict):
    """Ray Serve autoscaling of a stateless deployment."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(2, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start (defaults to min_replicas).")
    target_ongoing_requests: float = Field(32, gt=0, description="Ongoing requests per replica the autoscaler aims for.")


class DeploymentSpec(_Strict):
    """Serve options of one deployment."""

    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per replica (<= 0.5 on a 2-core laptop).")
    resources: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {'cpu_node': 0.01} to keep it on the nodes that declare one "
        "(off the GPU nodes, whose loss must not take the front door or relay with it).",
    )
    max_ongoing_requests: int = Field(256, ge=1, description="Concurrent requests per replica (streams are long-lived).")
    max_queued_requests: int = Field(
        128, ge=-1, description="Requests waiting for a free slot of a replica (-1: unbounded); beyond: Serve answers 429 + Retry-After."
    )
    autoscaling: AutoscalingSpec | None = Field(default_factory=AutoscalingSpec, description="None: a fixed single replica.")
    args: dict[str, Any] = Field(default_factory=dict, description="Extra constructor arguments of the deployment.")


class ServingConfig(_Strict):
    """Everything `build_app` needs."""

    app_name: str = Field(DEFAULT_APP_NAME, description="Serve application name; also scopes the registry actor.")
    models: dict[str, ModelSpec] = Field(..., min_length=1, description="Models offered, by the name sessions ask for.")
    default_model: str | None = Field(None, description="Model used when a request names none (first model if unset).")
    tenants: list[TenantSpec] = Field(default_factory=list, description="Tenants and keys (merged with HELIOS_API_KEYS).")
    default_quota: QuotaSpec = Field(default_factory=QuotaSpec, description="Quota of tenants that set none.")
    admin_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer keys of the admin API (/v1/admin/...; merged with HELIOS_ADMIN_KEYS); no tenant key works there. "
        "None configured: the admin API refuses every key.",
    )
    admin_key_digests: list[str] = Field(
        default_factory=list, description="SHA-256 (hex) of further admin keys (the running server keeps digests only, as for tenants)."
    )
    queue_size: int = Field(4, ge=0, description="Sessions that may wait per model for a free group; beyond: 429.")
    max_queued_commands: int = Field(
        32, ge=0, description="Set-up commands a queued session keeps for its admission (applied in order); beyond: 429."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 202 and 429.")
    idle_timeout_s: float = Field(120.0, gt=0, description="A session with no viewer, poll or command for this long ends ('idle_timeout').")
    ring_size: int = Field(8, ge=1, description="Recent chunk refs a session keeps for late joiners.")
    message_log_size: int = Field(1024, ge=16, description="Recent protocol messages a session keeps for SSE/WS replay.")
    session_linger_s: float = Field(15.0, ge=0, description="An ended session's actor stays this long so viewers drain its last chunks.")
    spare_session_actors: int = Field(
        1, ge=0, le=16, description="Session actors started ahead per model, so an admitted session skips actor start-up (time to first frame); 0: none."
    )
    command_timeout_s: float = Field(30.0, gt=0, description="Longest wait for a command's ack before 504.")
    watchdog_period_s: float = Field(
        2.0, gt=0, le=60, description="How often the registry checks that session actors and shard groups are alive (ends a dead one's session with a reason, rebuilds a dead group)."
    )
    max_viewers_per_session: int = Field(
        64, ge=1, description="Readers of one session at once: video streams of every format plus SSE and WebSocket; beyond: 429."
    )
    viewer_stall_timeout_s: float = Field(
        30.0, gt=0, description="A video viewer whose socket accepts nothing for this long is disconnected (direct ingress only)."
    )
    queued_wait_s: float = Field(
        30.0, gt=0, le=300, description="Long-poll window of a reader waiting for its queued session's admission (one registry call per change)."
    )
    recording_retention_s: float = Field(
        3600.0, ge=0, description="Session recordings are deleted this long after their session ended (0: at its end)."
    )
    recording_uri: str = Field(
        default_factory=default_recording_uri,
        description="Where recordings are kept: a local folder (the default: <temp dir>/helios-recordings, one machine only) or "
        "any fsspec URL every node reaches (file:///shared/volume, s3://bucket/prefix, gcs://..., a chain such as "
        "simplecache::s3://...). Written by the relay, read by every front door; the protocol's package (s3fs, gcsfs) must be installed.",
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Larger request bodies get 413, larger WebSocket frames close 1009.")
    min_api_key_chars: int = Field(MIN_API_KEY_CHARS, ge=8, description="Shorter API keys are a config error.")
    viewer_token_grace_s: float = Field(
        600.0, ge=0, description="A viewer token keeps working this long after its session ended (to fetch the recording); then 401."
    )
    viewer_token_ttl_s: float | None = Field(
        None, gt=0, description="When set, a viewer token also expires this long after it was issued (the owner rotates it)."
    )
    cors_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins (`https://host[:port]`) whose pages may call the API from a browser; empty: none (CORS closed); ['*']: any.",
    )
    metrics_cache_s: float = Field(5.0, ge=0, description="/metrics reuses the registry's and sessions' numbers for this long.")
    control_plane_resources: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Custom Ray resources of the registry and every session actor (0 CPUs each), e.g. {'cpu_node': 0.001}: "
        "keeps them on the nodes that declare it, so a GPU node's loss takes only the sessions whose group was there. "
        "Empty: any node.",
    )
    cache_dir: str = Field("~/.cache/helios-serve", description="Where preset checkpoints are generated.")
    web_dir: str | None = Field(None, description="Player page folder served at / (the repository's web/ when unset).")
    front_door: DeploymentSpec = Field(default_factory=DeploymentSpec, description="Front door (FastAPI ingress) options.")
    relay: DeploymentSpec = Field(default_factory=DeploymentSpec, description="Relay deployment options.")

    @model_validator(mode="after")
    def _check(self) -> "ServingConfig":
        if self.default_model is None:
            self.default_model = next(iter(self.models))
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {sorted(self.models)}")
        for key in ("recording_retention_s", "recording_uri"):
            if key in self.relay.args:
                raise ValueError(f"relay.args.{key}: set {key} at the top level of the config (the front doors read it too)")
        names = [t.name for t in self.tenants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tenants: duplicate tenant names {sorted(dup)}")
        self._check_keys()
        return self

    def _check_keys(self) -> None:
        """Key length and one tenant per key; errors name tenants, never a key."""
        owner: dict[str, str] = {}
        for t in self.tenants:
            for i, k in enumerate(t.api_keys):
                if len(k.get_secret_value()) < self.min_api_key_chars:
                    raise ValueError(
                        f"tenants: tenant {t.name!r} api_keys[{i}] is shorter than min_api_key_chars ({self.min_api_key_chars})"
                    )
            for d in {key_digest(k.get_secret_value()) for k in t.api_keys} | set(t.api_key_digests):
                if owner.setdefault(d, t.name) != t.name:
                    raise ValueError(f"tenants: one API key is mapped to two tenants ({owner[d]!r} and {t.name!r})")
        for i, k in enumerate(self.admin_keys):
            if len(k.get_secret_value()) < self.min_api_key_chars:
                raise ValueError(
                    f"admin_keys[{i}] (config admin_keys first, then {ADMIN_KEYS_ENV}) is shorter than min_api_key_chars "
                    f"({self.min_api_key_chars})"
                )
        for d in self.admin_digests():
            if d in owner:
                raise ValueError(f"admin_keys: an admin key is also an API key of tenant {owner[d]!r}; use separate keys")

    @field_validator("admin_key_digests")
    @classmethod
    def _admin_hex(cls, digests: list[str]) -> list[str]:
        return _check_digests(digests, "admin_key_digests")

    @field_validator("recording_uri")
    @classmethod
    def _recording_uri(cls, uri: str) -> str:
        open_uri(uri)  # ValueError naming recording_uri: unknown protocol, package missing, memory://, read-only
        return uri

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for o in origins:
            if o != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", o):
                raise ValueError(f"cors_allowed_origins: {o!r} is not an origin like 'https://app.example.com' (or '*')")
        return origins

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in models:
            if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"model name {name!r} must be 1-64 characters of letters, digits, '-', '_', '.'")
        return models

    def quota_of(self, tenant: str) -> QuotaSpec:
        """The quota of `tenant` (its own or the default)."""
        for t in self.tenants:
            if t.name == tenant and t.quota is not None:
                return t.quota
        return self.default_quota

    def digest_table(self) -> list[tuple[str, str]]:
        """(SHA-256 hex of a key, tenant) pairs for the authenticator."""
        return [(key_digest(k.get_secret_value()), t.name) for t in self.tenants for k in t.api_keys] + [
            (d, t.name) for t in self.tenants for d in t.api_key_digests
        ]

    def admin_digests(self) -> list[str]:
        """SHA-256 hex digests of every admin key (the admin authenticator's table)."""
        return sorted({key_digest(k.get_secret_value()) for k in self.admin_keys} | set(self.admin_key_digests))

    def with_hashed_keys(self) -> "ServingConfig":
        """A copy holding only key digests: what the front door and the registry run with."""
        tenants = [
            t.model_copy(update={"api_keys": [], "api_key_digests": sorted({d for d, n in self.digest_table() if n == t.name})})
            for t in self.tenants
        ]
        return self.model_copy(update={"tenants": tenants, "admin_keys": [], "admin_key_digests": self.admin_digests()})


def load_config(source: str | Path | dict[str, Any]) -> ServingConfig:
    """A ServingConfig from a YAML file, a dict, or a dict holding `config_path` / `config`."""
    if isinstance(source, dict):
        if "config_path" in source:
            return load_config(source["config_path"])
        return ServingConfig.model_validate(source.get("config", source))
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"config_path {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    # Accept both a bare serving config and a Serve config whose first app carries it in args.
    if "applications" in data:
        data = data["applications"][0].get("args", {})
        data = data.get("config", data)
    return ServingConfig.model_validate(data)


def resolve_model_path(spec: ModelSpec, cache_dir: str) -> str | None:
    """Pipeline folder of a helios model, generating the tiny preset into the cache when absent."""
    if spec.kind != "helios":
        return None
    if spec.path:
        return str(Path(spec.path).expanduser())
    folder = Path(cache_dir).expanduser() / spec.preset
    from helios.pipeline.tiny import make_tiny_pipeline

    logger.info("preparing the %s preset checkpoint in %s", spec.preset, folder)
    return str(make_tiny_pipeline(folder, seed=0))
