"""Soak: sessions of both models come and go for a long time; does any Ray process keep growing?

Starts its own local Ray cluster and `serve.run(build_app(...))` (both models at tiny
sizes, like the embedded default), then keeps `--concurrency` session lifecycles going:
create (either model) -> set_prompt/start -> 1-3 viewers (mp4, mjpeg, msgpack, SSE, WS,
LL-HLS) join and leave -> commands (schedule_prompt, set_prompt, pause/resume, set_seed,
reset) -> delete. Traffic goes to 127.0.0.1 only and is bounded by the concurrency.

The run is split into rounds; after the warm-up and after every round the traffic stops,
every session ends, and an *idle checkpoint* is taken: what a process still holds with no
session at all is what a leak would grow. Every `--sample-s` seconds (traffic or not) it
samples, per Ray process named by role (front door, relay, registry, session actor,
shard worker of a model/group/rank, proxy, controller): RSS, private RSS (RSS less shared
pages: object-store pages mapped in are not counted), open fds and threads; plus the
object store's bytes, actors and placement groups alive, and the relay's per-session
state (feeds, HLS holds, recordings being written).

Prints JSON lines: one `sample` per sample (with --verbose), one `checkpoint` per idle
checkpoint, then one `slope` per process (least-squares MB/min over the samples after
the warm-up, of processes alive the whole time) with a verdict, and a `summary`.

Usage: python bench/soak.py [--minutes 30] [--rounds 3] [--port 8799] [--concurrency 4]
       [--malloc-arena-max N]   (MALLOC_ARENA_MAX for every Ray worker: does glibc hold the RSS?)
       [--trim]                 (at each checkpoint also malloc_trim(0) every long-lived actor and sample again)
       [--trace]                (tracemalloc in the relay, front door and registry: top growth sites per checkpoint)
The functions here are also what tests/serve/test_soak.py runs against the shared app.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import psutil

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("soak")

FORMATS = ("mp4", "mjpeg", "msgpack", "sse", "ws", "hls")
"""What a viewer watches a session with."""
MB = 2**20
FLAT_MB_PER_MIN = 1.0
"""A slope below this (MB/min, per process) is "flat" whatever its noise."""
TINY = {"height": 128, "width": 128, "pyramid_steps": [1, 1, 1]}


def emit(**record: Any) -> None:
    print(json.dumps(record, separators=(",", ":")), flush=True)


# ---- what runs where ---------------------------------------------------------------------------
def _ray_processes() -> list[psutil.Process]:
    """The worker processes of this driver's Ray node (children of its raylet): never another cluster's."""
    import ray

    node = ray._private.worker._global_node
    raylet = node.all_processes["raylet"][0].process.pid
    return psutil.Process(raylet).children(recursive=True)


def _role(actor: dict) -> str:
    """A readable role of one actor: front_door, relay, registry, session_actor, shard:<group>:r<rank>, ..."""
    cls, name = actor.get("class_name") or "", actor.get("name") or ""
    if cls.startswith("ServeReplica:"):
        return {"FrontDoor": "front_door", "Relay": "relay"}.get(cls.rsplit(":", 1)[-1], cls)
    if cls == "ShardWorker" and name.startswith("helios-shard-"):
        group, rank = name.removeprefix("helios-shard-").rsplit("-", 1)
        return f"shard:{group}:r{rank}"
    return {"SessionRegistry": "registry", "SessionActor": "session_actor", "ProxyActor": "proxy",
            "ServeController": "controller"}.get(cls, cls or "worker")


def actor_roles() -> dict[int, str]:
    """pid -> role of every live actor of this cluster."""
    roles: dict[int, str] = {}
    for a in _alive_actors():
        if a.get("pid"):
            roles[int(a["pid"])] = _role(a)
    return roles


def _alive_actors() -> list[dict]:
    """Live actors of this cluster from the GCS actor table (the state API needs the dashboard, which the soak does not start)."""
    from ray._private import state

    return [{"class_name": a["ActorClassName"], "name": a["Name"], "pid": a["Pid"]}
            for a in state.actors(actor_state_name="ALIVE").values()]


def store_bytes() -> dict[str, float]:
    """Object store MB in use and MB spilled so far (the raylet's own numbers)."""
    import ray
    from ray._private import internal_api

    reply = internal_api.get_memory_info_reply(internal_api.get_state_from_address(ray.get_runtime_context().gcs_address))
    return {"store_mb": reply.store_stats.object_store_bytes_used / MB, "spilled_mb": reply.store_stats.spilled_bytes_total / MB}


def placement_groups_alive() -> int:
    from ray.util import placement_group_table

    return sum(1 for pg in placement_group_table().values() if pg.get("state") != "REMOVED")


def relay_state(app_name: str) -> dict[str, int]:
    """Per-session state the relay replicas still hold, summed over replicas (Relay.state_counts)."""
    from ray import serve

    handle = serve.get_deployment_handle("Relay", app_name)
    totals: Counter = Counter()
    # One call reaches one replica; the soak runs one relay replica (autoscaling off), so one call is all.
    totals.update(handle.state_counts.remote().result(timeout_s=60))
    return dict(totals)


def sample(app_name: str) -> dict[str, Any]:
    """One sample: per process (pid, role) its RSS/private MB, fds and threads; cluster-wide counters."""
    roles = actor_roles()
    procs: dict[str, dict[str, float]] = {}
    for proc in _ray_processes():
        try:
            with proc.oneshot():
                mem = proc.memory_info()
                role = roles.get(proc.pid)
                if role is None:
                    cmd = (proc.cmdline() or ["?"])[0]
                    role = "haproxy" if cmd.endswith("haproxy") else ("idle_worker" if "default_worker" in " ".join(proc.cmdline()) or cmd.startswith("ray::IDLE") else cmd.split(" ")[0][:40])
                procs[f"{role}#{proc.pid}"] = {"rss": mem.rss / MB, "private": (mem.rss - mem.shared) / MB,
                                               "fds": proc.num_fds(), "threads": proc.num_threads()}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    actors = Counter(r.split(":")[0] for r in roles.values())
    return {"t": time.time(), "procs": procs, **store_bytes(), "actors": dict(actors),
            "placement_groups": placement_groups_alive(), "relay": relay_state(app_name)}


# ---- statistics --------------------------------------------------------------------------------
def slope(ts: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys over ts (per second) and its standard error."""
    n = len(ts)
    if n < 3:
        return 0.0, float("inf")
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    if sxx == 0:
        return 0.0, float("inf")
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx
    resid = sum((y - my - b * (t - mt)) ** 2 for t, y in zip(ts, ys))
    return b, (resid / (n - 2) / sxx) ** 0.5


def slopes(samples: list[dict], metric: str = "rss") -> dict[str, dict[str, Any]]:
    """Per process alive in every sample: MB/min (and its standard error) of `metric`, and a verdict.

    "flat" when the slope is under FLAT_MB_PER_MIN or within two standard errors of zero
    (noise), else "growing" / "shrinking"."""
    if not samples:
        return {}
    keys = set(samples[0]["procs"]).intersection(*(s["procs"] for s in samples[1:]))
    out = {}
    for key in sorted(keys):
        ts = [(s["t"] - samples[0]["t"]) for s in samples]
        ys = [s["procs"][key][metric] for s in samples]
        b, se = slope(ts, ys)
        per_min, se_min = b * 60, se * 60
        verdict = "flat" if abs(per_min) < FLAT_MB_PER_MIN or abs(per_min) <= 2 * se_min else ("growing" if per_min > 0 else "shrinking")
        out[key] = {"mb_per_min": round(per_min, 2), "stderr": round(se_min, 2), "verdict": verdict,
                    "first_mb": round(ys[0], 1), "last_mb": round(ys[-1], 1), "max_mb": round(max(ys), 1)}
    return out


def growth(before: dict, after: dict, metric: str = "rss") -> dict[str, float]:
    """MB of `metric` gained by each process present in both samples."""
    return {k: round(after["procs"][k][metric] - v[metric], 1) for k, v in before["procs"].items() if k in after["procs"]}


# ---- traffic -----------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the traffic saw: HTTP statuses, viewers by format, sessions, errors (thread-safe)."""

    statuses: Counter = field(default_factory=Counter)
    viewers: Counter = field(default_factory=Counter)
    sessions: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, what: str, code: int, retry_after: str | None = None) -> None:
        """Count one answer; a 5xx is an error, except an LL-HLS 503 with Retry-After (RFC 8216bis: a
        blocking reload that timed out, or no segment yet), counted under `<what>:503-retry`."""
        with self.lock:
            expected = code == 503 and what == "view_hls" and retry_after is not None
            self.statuses[f"{what}:{code}{'-retry' if expected else ''}"] += 1
            if code >= 500 and not expected:
                self.errors.append(f"{what}: HTTP {code}")

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text[:300])

    def fivexx(self) -> int:
        return sum(n for k, n in self.statuses.items() if k.rsplit(":", 1)[1].isdigit() and int(k.rsplit(":", 1)[1]) >= 500)


class Traffic:
    """`concurrency` session lifecycles in threads until `stop()`; every request to `base_url` only."""

    def __init__(self, base_url: str, headers: dict[str, str], models: list[str], *, concurrency: int = 4,
                 session_s: tuple[float, float] = (8.0, 25.0), seed: int = 0):
        self.base_url, self.headers, self.models = base_url, headers, models
        self.concurrency, self.session_s = concurrency, session_s
        self.tally = Tally()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _rand(self, fn: Callable[[random.Random], Any]) -> Any:
        with self._rng_lock:
            return fn(self._rng)

    def start(self) -> "Traffic":
        self._stop.clear()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True, name=f"soak-{i}") for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 300.0) -> None:
        """Stop starting sessions; wait for the running ones to be deleted and their viewers gone."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(1.0, deadline - time.monotonic()))

    def _loop(self, i: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=120) as http:
            n = 0
            while not self._stop.is_set():
                model = self.models[(i + n) % len(self.models)]
                n += 1
                try:
                    self._one_session(http, model)
                except Exception as exc:  # noqa: BLE001 - counted; the soak goes on
                    self.tally.error(f"{model} session: {type(exc).__name__}: {exc}")
                    self._stop.wait(2.0)

    def _post(self, http: httpx.Client, what: str, url: str, **kw) -> httpx.Response:
        r = http.post(url, **kw)
        self.tally.status(what, r.status_code)
        return r

    def _one_session(self, http: httpx.Client, model: str) -> None:
        r = self._post(http, "create", "/v1/sessions", json={"model": model, "seed": self._rand(lambda g: g.randrange(1000))})
        if r.status_code == 429:
            self._stop.wait(float(r.headers.get("retry-after", "2")))
            return
        if r.status_code not in (201, 202):
            self.tally.error(f"create {model}: {r.status_code} {r.text[:200]}")
            self._stop.wait(2.0)
            return
        body = r.json()
        sid, urls = body["session_id"], body["urls"]
        self.tally.sessions[model] += 1
        viewers: list[threading.Thread] = []
        try:
            cmd = f"/v1/sessions/{sid}/commands"
            self._post(http, "command", cmd, json={"command": "set_prompt", "args": {"prompt": f"soak {sid[:6]}"}})
            self._post(http, "command", cmd, json={"command": "start"})
            leave = threading.Event()
            for _ in range(self._rand(lambda g: g.randint(1, 3))):
                fmt = self._rand(lambda g: g.choice(FORMATS))
                stay = self._rand(lambda g: g.uniform(2.0, self.session_s[1]))
                t = threading.Thread(target=self._viewer, args=(fmt, sid, urls, stay, leave), daemon=True)
                t.start()
                viewers.append(t)
            end = time.monotonic() + self._rand(lambda g: g.uniform(*self.session_s))
            k = 0
            while time.monotonic() < end and not self._stop.is_set():
                self._stop.wait(self._rand(lambda g: g.uniform(1.0, 3.0)))
                k += 1
                self._post(http, "command", cmd, json=self._rand(lambda g: self._command(g, k)))
        finally:
            r = http.delete(f"/v1/sessions/{sid}")
            self.tally.status("delete", r.status_code)
            leave.set()
            for t in viewers:
                t.join(120)

    @staticmethod
    def _command(g: random.Random, k: int) -> dict:
        choice = g.choice(["set_prompt", "schedule_prompt", "pause_resume", "set_seed", "reset"])
        if choice == "set_prompt":
            return {"command": "set_prompt", "args": {"prompt": f"soak prompt {g.randrange(64)}"}}
        if choice == "schedule_prompt":
            return {"command": "schedule_prompt", "args": {"prompt": f"later {g.randrange(64)}", "chunk": k + 2}}
        if choice == "set_seed":
            return {"command": "set_seed", "args": {"seed": g.randrange(1 << 20)}}
        if choice == "reset":
            return {"command": "reset"}
        return {"command": g.choice(["pause", "resume"])}

    def _viewer(self, fmt: str, sid: str, urls: dict, stay_s: float, leave: threading.Event) -> None:
        """Watch for `stay_s` seconds (or until the session ends or `leave`), then go."""
        self.tally.viewers[fmt] += 1
        deadline = time.monotonic() + stay_s
        try:
            if fmt == "ws":
                self._ws(sid, deadline, leave)
            elif fmt == "hls":
                self._hls(urls["hls"], deadline, leave)
            else:
                url = urls["events"] if fmt == "sse" else urls[f"stream_{fmt}"]
                with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(120, read=60)) as http:
                    with http.stream("GET", url) as r:
                        self.tally.status(f"view_{fmt}", r.status_code)
                        for _ in r.iter_raw(1 << 16):
                            if time.monotonic() > deadline or leave.is_set():
                                break
        except (httpx.HTTPError, OSError) as exc:
            if not leave.is_set():  # a stream cut by the session's end is normal
                self.tally.error(f"viewer {fmt}: {type(exc).__name__}: {exc}")

    def _ws(self, sid: str, deadline: float, leave: threading.Event) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        url = self.base_url.replace("http://", "ws://") + f"/v1/sessions/{sid}/ws"
        try:
            with connect(url, additional_headers=self.headers, open_timeout=60) as ws:
                self.tally.status("view_ws", 101)
                while time.monotonic() < deadline and not leave.is_set():
                    try:
                        ws.recv(timeout=1.0)
                    except TimeoutError:
                        continue
        except ConnectionClosed:
            return

    def _hls(self, playlist: str, deadline: float, leave: threading.Event) -> None:
        """A player's pulls: the playlist, the init segment and each newest segment, once a second."""
        base = playlist.rsplit("/", 1)[0]
        token = playlist.split("?", 1)[1]
        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            seen = set()
            while time.monotonic() < deadline and not leave.is_set():
                r = http.get(playlist)
                self.tally.status("view_hls", r.status_code, r.headers.get("retry-after"))
                if r.status_code == 200:
                    segs, gap = [], False
                    for ln in r.text.splitlines():
                        if ln == "#EXT-X-GAP":
                            gap = True  # the next segment is a gap: not fetchable, by design
                        elif not ln.startswith("#") and ".m4s" in ln:
                            if not gap:
                                segs.append(ln)
                            gap = False
                    for seg in segs[-2:]:
                        if seg not in seen:
                            seen.add(seg)
                            name = seg if "?" in seg else f"{seg}?{token}"
                            self.tally.status("view_hls_seg", http.get(f"{base}/{name}").status_code)
                elif r.status_code == 503 and r.headers.get("retry-after"):
                    leave.wait(float(r.headers["retry-after"]))
                    continue
                elif r.status_code >= 400:
                    return
                leave.wait(1.0)


# ---- the run -------------------------------------------------------------------------------------
def quiesce(app_name: str, registry, timeout: float = 240.0, settle_s: float = 0.0) -> dict:
    """Wait until no session runs, no session actor but the spares lives and the relay holds nothing per session."""
    import ray

    deadline = time.monotonic() + timeout
    spares_wanted = None
    while True:
        stats = ray.get(registry.stats.remote())
        spares = ray.get(registry.spare_counts.remote())
        relay = relay_state(app_name)
        roles = actor_roles()
        session_actors = sum(1 for r in roles.values() if r == "session_actor")
        spares_wanted = sum(spares.values())
        idle = (not stats["sessions"] and all(m["leased"] == 0 and m["queued"] == 0 for m in stats["models"].values())
                and session_actors <= spares_wanted and not any(relay.values()))
        if idle:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"not idle after {timeout}s: sessions {list(stats['sessions'])}, "
                               f"session actors {session_actors} (spares {spares_wanted}), relay {relay}")
        time.sleep(1.0)
    if settle_s:
        time.sleep(settle_s)  # finished tasks' objects and idle workers go; a period, not a synchronisation
    return {"session_actors": session_actors, "spares": spares_wanted, "relay": relay}


def memory_reports(app_name: str, trim: bool = False, objects: bool = False, trace: bool = False) -> dict[str, dict]:
    """`memory_report` of the relay, the front door, the registry and every shard worker (with `trim`:
    after malloc_trim(0), so `trimmed_mb` is what glibc held free but resident; with `trace`: the first
    call starts tracemalloc in the relay, front door and registry, later ones list the sites grown most)."""
    import ray
    from ray import serve

    from deployments.naming import NAMESPACE, registry_actor_name

    out: dict[str, dict] = {}
    for role, deployment in (("relay", "Relay"), ("front_door", "FrontDoor")):
        out[role] = serve.get_deployment_handle(deployment, app_name).memory_report.remote(trim, objects, trace).result(timeout_s=120)
    registry = ray.get_actor(registry_actor_name(app_name), namespace=NAMESPACE)
    out["registry"] = ray.get(registry.memory_report.remote(trim, objects, trace), timeout=120)
    for name, handle in shard_workers():
        out[name] = ray.get(handle.memory_report.remote(trim, objects), timeout=120)
    return out


def shard_workers() -> list[tuple[str, Any]]:
    import ray

    from deployments.naming import NAMESPACE

    return [(_role(a), ray.get_actor(a["name"], namespace=NAMESPACE)) for a in _alive_actors() if a["class_name"] == "ShardWorker"]


def serving_config(tiny_path: str, key: str, admin_key: str):
    """Both models at tiny sizes, sized like the embedded default (serve_config.yaml), one relay and front door."""
    from deployments.config import ServingConfig

    return ServingConfig.model_validate({
        "app_name": "helios",
        "recording_retention_s": 60,
        "admin_keys": [admin_key],
        "default_model": "helios-tiny",
        "models": {
            "helios-tiny": {"kind": "helios", "path": tiny_path, "tp_size": 2, "pool_size": 2, "cpus_per_worker": 0.25,
                            "lookahead": 1, "options": TINY},
            "test-pattern": {"kind": "test-pattern", "pool_size": 4,
                             "options": {"height": 128, "width": 128, "frames_per_chunk": 33, "fps": 24}},
        },
        "tenants": [{"name": "soak", "api_keys": [key], "quota": {"max_concurrent_sessions": 16}}],
        "queue_size": 4,
        "idle_timeout_s": 120,
        "ring_size": 8,
        "session_linger_s": 2,
        "front_door": {"num_cpus": 0.1, "autoscaling": None},
        "relay": {"num_cpus": 0.1, "autoscaling": None},
    })


def report(samples: list[dict], checkpoints: list[dict], tally: Tally, warm_t: float) -> dict:
    """Emit the slopes (after the warm-up) and the summary; returns the summary."""
    after = [s for s in samples if s["t"] >= warm_t]
    per_proc = slopes(after, "rss")
    private = slopes(after, "private")
    for key, s in per_proc.items():
        emit(kind="slope", process=key, metric="rss", **s, private_mb_per_min=private[key]["mb_per_min"],
             private_verdict=private[key]["verdict"])
    ts = [s["t"] - after[0]["t"] for s in after] if after else []
    store_b, store_se = slope(ts, [s["store_mb"] for s in after]) if after else (0.0, 0.0)
    idle = [c["sample"] for c in checkpoints]
    summary = {
        "kind": "summary",
        "minutes_after_warmup": round((after[-1]["t"] - after[0]["t"]) / 60, 1) if after else 0,
        "samples": len(after),
        "sessions": dict(tally.sessions), "viewers": dict(tally.viewers), "statuses": dict(tally.statuses),
        "http_5xx": tally.fivexx(), "errors": tally.errors[:20], "error_count": len(tally.errors),
        "store_mb_per_min": round(store_b * 60, 2),
        "growing": sorted(k for k, s in per_proc.items() if s["verdict"] == "growing"),
        "idle_growth_rss_mb": [growth(idle[0], c) for c in idle[1:]] if len(idle) > 1 else [],
        "idle_growth_total_rss_mb": [round(sum(growth(idle[0], c).values()), 1) for c in idle[1:]],
        "idle_growth_after_trim_mb": ([growth(checkpoints[0]["trimmed"], c["trimmed"]) for c in checkpoints[1:]]
                                      if checkpoints and checkpoints[0].get("trimmed") else []),
        "idle_fds": [sum(p["fds"] for p in c["procs"].values()) for c in idle],
    }
    print(json.dumps(summary), flush=True)
    return summary


def run_soak(base_url: str, headers: dict, app_name: str, registry, *, minutes: float, rounds: int, warmup_min: float,
             sample_s: float, concurrency: int, trim: bool = False, trace: bool = False, verbose: bool = False) -> dict:
    """Warm-up traffic, then `rounds` rounds of traffic of `minutes`/rounds each, an idle checkpoint after each."""
    samples: list[dict] = []
    checkpoints: list[dict] = []
    traffic = Traffic(base_url, headers, ["helios-tiny", "test-pattern"], concurrency=concurrency)

    def traffic_for(seconds: float) -> None:
        traffic.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(sample_s, max(0.0, end - time.monotonic())))  # the sampling period
            s = sample(app_name)
            samples.append(s)
            if verbose:
                emit(kind="sample", t=round(s["t"], 1), total_rss_mb=round(sum(p["rss"] for p in s["procs"].values()), 1),
                     store_mb=round(s["store_mb"], 1), actors=s["actors"], relay=s["relay"], sessions=dict(traffic.tally.sessions))
        traffic.stop()

    def checkpoint(name: str) -> None:
        q = quiesce(app_name, registry, settle_s=5.0)
        s = sample(app_name)
        reports = memory_reports(app_name, trim=trim, objects=True, trace=trace)
        trimmed = sample(app_name) if trim else None
        checkpoints.append({"name": name, "sample": s, "trimmed": trimmed, "reports": reports})
        emit(kind="checkpoint", name=name, sessions=dict(traffic.tally.sessions), quiet=q,
             rss_mb={k: round(v["rss"], 1) for k, v in s["procs"].items()},
             rss_after_trim_mb={k: round(v["rss"], 1) for k, v in trimmed["procs"].items()} if trimmed else None,
             reports=reports,
             total_rss_mb=round(sum(p["rss"] for p in s["procs"].values()), 1),
             fds=sum(p["fds"] for p in s["procs"].values()), threads=sum(p["threads"] for p in s["procs"].values()),
             store_mb=round(s["store_mb"], 1), actors=s["actors"], placement_groups=s["placement_groups"], relay=s["relay"])

    traffic_for(warmup_min * 60)
    checkpoint("warm")
    warm_t = time.time()
    for r in range(rounds):
        traffic_for(minutes * 60 / rounds)
        checkpoint(f"round{r + 1}")
    return {**report(samples, checkpoints, traffic.tally, warm_t), "checkpoints": checkpoints, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="traffic after the warm-up")
    ap.add_argument("--rounds", type=int, default=3, help="idle checkpoints after the warm-up one")
    ap.add_argument("--warmup-min", type=float, default=2.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=4, help="session lifecycles at once")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--malloc-arena-max", type=int, default=None)
    ap.add_argument("--trim", action="store_true", help="at each checkpoint also malloc_trim(0) the long-lived actors and sample again")
    ap.add_argument("--trace", action="store_true", help="tracemalloc in the relay, front door and registry from the warm checkpoint on")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import tempfile

    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.local_ray import start_local_ray
    from deployments.naming import NAMESPACE, registry_actor_name
    from helios.pipeline.tiny import make_tiny_pipeline

    key, admin = "soak-key-0123456789", "soak-admin-0123456789"
    env = {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    with tempfile.TemporaryDirectory(prefix="helios-soak-") as tmp:
        tiny = make_tiny_pipeline(os.path.join(tmp, "tiny"), seed=0)
        start_local_ray(tries=5, address="local", num_cpus=4, object_store_memory=256 * MB, include_dashboard=False,
                        log_to_driver=False, runtime_env={"env_vars": env})
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            serve.run(build_app(serving_config(str(tiny), key, admin)), name="helios", route_prefix="/")
            registry = ray.get_actor(registry_actor_name("helios"), namespace=NAMESPACE)
            ray.get(registry.wait_warm.remote(300))
            emit(kind="start", **vars(args))
            run_soak(f"http://127.0.0.1:{args.port}", {"Authorization": f"Bearer {key}"}, "helios", registry,
                     minutes=args.minutes, rounds=args.rounds, warmup_min=args.warmup_min, sample_s=args.sample_s,
                     concurrency=args.concurrency, trim=args.trim, trace=args.trace, verbose=args.verbose)
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
