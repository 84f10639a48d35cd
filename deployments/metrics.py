"""Prometheus metrics of the front door: request/error counters live here, the rest is read at scrape time.

Session and queue gauges come from the registry (the one source of truth), chunk
latency (generation end → first byte sent to a viewer) and time to first frame (session
created → its first chunk sent to a viewer) come from the relay's samples, effective FPS
from the session actors.

/metrics is unauthenticated, so no series names a tenant or a session: labels are the
configured model names and fixed words only, and the number of series stays bounded by
the config, whatever tenants do (docs/serving.md#metrics-and-privacy).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deployments.protocol import SessionStats
from deployments.protocol_pool import RegistryStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TTFF_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class FrontDoorMetrics:
    """Per-replica collectors; `render(stats, fps)` fills the gauges and returns the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("helios_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.errors = Counter("helios_errors", "Errors by kind (http_4xx, http_5xx, stream, session)", ["kind"], registry=r)
        self.chunk_latency = Histogram(
            "helios_chunk_latency_seconds",
            "Generation end of a chunk to its first byte sent to a viewer (measured by the relay)",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_gen = Histogram(
            "helios_chunk_generation_seconds", "Model time per chunk (from chunk_complete gen_ms)", buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttff = Histogram(
            "helios_time_to_first_frame_seconds",
            "Session created (POST /v1/sessions admitted) to its first chunk sent to a viewer (measured by the relay)",
            buckets=TTFF_BUCKETS,
            registry=r,
        )
        self.active = Gauge("helios_sessions_active", "Active sessions per model", ["model"], registry=r)
        self.queued = Gauge("helios_sessions_queued", "Queued sessions per model", ["model"], registry=r)
        self.tenants = Gauge("helios_tenants_with_sessions", "Tenants holding at least one session (active or queued)", registry=r)
        self.groups = Gauge("helios_shard_groups", "Shard groups (or slots) per model and state", ["model", "state"], registry=r)
        self.pool_target = Gauge(
            "helios_pool_target_groups", "Groups a model's pool aims at (leased + headroom + queued, within min..max)", ["model"], registry=r
        )
        self.warmup = Gauge(
            "helios_pool_warmup_seconds", "Shard group warm-up, placement group ready -> model loaded (last, mean)", ["model", "stat"],
            registry=r,
        )
        self.scale_events = Gauge(
            "helios_pool_events", "Pool events since the registry started (scale_up, scale_down, placement_timeout, failed_build)",
            ["model", "counter"], registry=r,
        )
        self.fps = Gauge(
            "helios_effective_fps", "Frames per second the active sessions of a model produce (min, mean, max)", ["model", "stat"], registry=r
        )
        self.counters = Gauge("helios_registry_total", "Registry counters (created, rejected, failed, rebuilt)", ["counter"], registry=r)
        self._seen_gen: dict[str, int] = {}
        self._seen_latency = 0
        self._seen_ttff = 0

    def observe_relay(self, relay_stats: dict) -> None:
        """Feed the latency and time-to-first-frame histograms with relay samples this replica has not seen yet."""
        self._seen_latency = _observe_new(self.chunk_latency.labels("any"), relay_stats, "latency_s", self._seen_latency)
        self._seen_ttff = _observe_new(self.ttff, relay_stats, "ttff_s", self._seen_ttff)

    def render(self, stats: RegistryStats, sessions: list[SessionStats]) -> bytes:
        """Exposition text with the gauges set from the registry `stats` and the sessions' `info`."""
        models = list(stats.get("models", {}))
        self.active.clear()
        self.queued.clear()
        for model in models:
            listed = [s for s in stats.get("sessions", {}).values() if s.get("model") == model]
            self.active.labels(model).set(sum(1 for s in listed if s.get("status") != "queued"))
            self.queued.labels(model).set(sum(1 for s in listed if s.get("status") == "queued"))
        self.tenants.set(len(stats.get("tenants", {})))
        for model, p in stats.get("models", {}).items():
            for state in ("free", "leased", "building"):
                self.groups.labels(model, state).set(p.get(state, 0))
            self.pool_target.labels(model).set(p.get("target", 0))
            for stat in ("last", "mean"):
                value = p.get(f"warmup_{stat}_s")
                if value is not None:
                    self.warmup.labels(model, stat).set(value)
            for event, key in (("scale_up", "scale_ups"), ("scale_down", "scale_downs"),
                               ("placement_timeout", "placement_timeouts"), ("failed_build", "failed_builds")):
                self.scale_events.labels(model, event).set(p.get(key, 0))
        for name, value in stats.get("counters", {}).items():
            self.counters.labels(name).set(value)
        self.fps.clear()
        for model in models:
            fps = [info.effective_fps for info in sessions if info.model == model]
            if fps:
                for stat, value in (("min", min(fps)), ("mean", sum(fps) / len(fps)), ("max", max(fps))):
                    self.fps.labels(model, stat).set(value)
        seen = {}
        for info in sessions:
            # gen_ms is a sliding window: observe only samples this replica has not seen yet.
            new = info.chunks - self._seen_gen.get(info.session_id, 0)
            for ms in info.gen_ms[-new:] if new > 0 else []:
                self.chunk_gen.observe(ms / 1000.0)
            seen[info.session_id] = info.chunks
        self._seen_gen = seen  # only sessions still sampled: bounded by METRICS_SESSIONS
        return generate_latest(self.registry)


def _observe_new(histogram, relay_stats: dict, key: str, seen: int) -> int:
    """Observe the samples of `key` (a running count plus the latest samples) after the first `seen`; the new count."""
    count = int((relay_stats.get(key) or {}).get("count") or 0)
    samples = relay_stats.get(key.removesuffix("_s") + "_samples_s") or []
    new = count - seen if count >= seen else count  # a new relay replica restarts at 0
    for s in samples[-new:] if new > 0 else []:
        histogram.observe(float(s))
    return count
