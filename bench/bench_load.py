"""Load generator: sessions x viewers x command rate against the local app; finds the knee, relay CPU per format.

Headless asyncio + httpx, traffic to 127.0.0.1 only, bounded in steps and time. Starts the app
like bench/bench_serve.py (a local Ray cluster, `serve.run(build_app(config))`) with the
test-pattern model only (no model time, paced real time), so it measures serving. Prints JSON lines:

- `step`: one load step (S sessions x V msgpack viewers each, each session steered at
  `--command-rate` set_prompt/s): per-session delivered FPS over real time, chunk latency to each
  viewer (`produced_at` of the chunk map -> the chunk fully arrived at the viewer; the first chunk of
  every viewer, the live-edge prefill, is left out) p50/p99, the relay's own latency to first byte,
  command latency, errors, and CPU (cores) and memory (RSS MB) per process kind over the step.
- `knee`: the heaviest step that still kept up (bench/load_knee.py: p99 within one chunk, every
  session >= 0.95 of real time, no error), the first that did not.
- `relay_cpu`: CPU seconds of the relay per viewer per second of video for mp4, mjpeg and msgpack,
  N viewers of one format at a time on one session, in one run (plus the relay with no viewer).

Usage: python bench/bench_load.py [--port 8799] [--sessions 1,2,4,8,16] [--viewers 1,4,16] [--chunks 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, field

import httpx
import msgpack
import psutil

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from load_knee import Step, delivered_fps, find_knee, passes, percentile, ramp  # noqa: E402 - bench scripts import their siblings by name
from served_app import CPU_CLUSTER, KEY, local_cluster  # noqa: E402

FPS = 24.0
FRAMES_PER_CHUNK = 33
CHUNK_S = FRAMES_PER_CHUNK / FPS
AUTH = {"Authorization": f"Bearer {KEY}"}


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def config(max_sessions: int, size: int):
    from deployments.config import ServingConfig

    return ServingConfig.model_validate({
        "app_name": "helios",
        "models": {"test-pattern": {"kind": "test-pattern", "pool_size": max_sessions,
                                    "options": {"height": size, "width": size}}},
        "tenants": [{"name": "bench", "api_keys": [KEY],
                     "quota": {"max_concurrent_sessions": max_sessions + 2, "max_streams": 4096, "max_event_streams": 4096}}],
        "session_linger_s": 1,
        # No spares: a replacement spare (an actor importing the runtime) would start inside the measured step.
        "spare_session_actors": 0,
        "front_door": {"num_cpus": 0.1, "autoscaling": None},
        "relay": {"num_cpus": 0.1, "autoscaling": None},
    })


# ---- processes ------------------------------------------------------------------------------
KINDS = (("FrontDoor", "front_door"), ("Relay", "relay"), ("SessionActor", "session_actor"),
         ("ShardWorker", "shard_worker"), ("SessionRegistry", "registry"), ("ProxyActor", "proxy"),
         ("ServeController", "serve_controller"))


def kind_of(proc: psutil.Process) -> str | None:
    """The part of the app a process is, from its Ray process title (`ray::<Class>[.method]`) or its name."""
    try:
        title = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if proc.pid == os.getpid():
        return "load_generator"
    if title.startswith("ray::"):
        for marker, kind in KINDS:
            if marker in title:
                return kind
        return None  # idle pooled workers
    if name in ("raylet", "gcs_server") or "haproxy" in name:
        return name
    return None


class ProcessMeter:
    """CPU seconds and RSS of the app's processes (this process tree) between `start` and `stop`."""

    def __init__(self) -> None:
        self._procs: dict[int, tuple[psutil.Process, str]] = {}
        self._t0 = 0.0
        self._cpu0: dict[int, float] = {}

    def _scan(self) -> None:
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            if proc.pid not in self._procs:
                kind = kind_of(proc)
                if kind is not None:
                    self._procs[proc.pid] = (proc, kind)

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            t = proc.cpu_times()
            return t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def start(self) -> None:
        self._procs = {}
        self._scan()
        self._cpu0 = {pid: c for pid, (p, _) in self._procs.items() if (c := self._cpu(p)) is not None}
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, dict]:
        """Per kind: processes, CPU cores used (all of them together), RSS MB (sum and largest)."""
        wall = max(1e-9, time.perf_counter() - self._t0)
        out: dict[str, dict] = {}
        for pid, (proc, kind) in self._procs.items():
            cpu1 = self._cpu(proc)
            if cpu1 is None or pid not in self._cpu0:
                continue
            try:
                rss = proc.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            k = out.setdefault(kind, {"n": 0, "cpu_s": 0.0, "rss_mb": 0.0, "rss_mb_max": 0.0})
            k["n"] += 1
            k["cpu_s"] += cpu1 - self._cpu0[pid]
            k["rss_mb"] += rss
            k["rss_mb_max"] = max(k["rss_mb_max"], rss)
        for k in out.values():
            k["cores"] = round(k.pop("cpu_s") / wall, 3)
            k["rss_mb"] = round(k["rss_mb"], 1)
            k["rss_mb_max"] = round(k["rss_mb_max"], 1)
        return out

    def cpu_s(self, kind: str) -> float:
        """CPU seconds of `kind`'s processes since `start` (call before `stop`)."""
        total = 0.0
        for pid, (proc, k) in self._procs.items():
            if k == kind and pid in self._cpu0 and (c := self._cpu(proc)) is not None:
                total += c - self._cpu0[pid]
        return total


# ---- the clients ----------------------------------------------------------------------------
@dataclass
class ViewerRecord:
    session: int
    fmt: str = "msgpack"
    chunks: list[tuple[int, int, float, float | None]] = field(default_factory=list)
    """(chunk, frames, arrival perf_counter, latency s) per chunk map received."""
    bytes: int = 0
    error: str | None = None


async def msgpack_viewer(client: httpx.AsyncClient, url: str, rec: ViewerRecord, want: int, started: asyncio.Event) -> None:
    """Read a msgpack stream until `want` chunks came (or the session ended), stamping each chunk's arrival."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
    try:
        async with client.stream("GET", url) as r:
            if r.status_code != 200:
                rec.error = f"HTTP {r.status_code}"
                return
            started.set()
            async for piece in r.aiter_bytes():
                rec.bytes += len(piece)
                unpacker.feed(piece)
                for item in unpacker:
                    if item.get("type") == "end":
                        return
                    produced = item.get("produced_at")
                    lat = None if produced is None else time.time() - float(produced)
                    rec.chunks.append((item["chunk"], item["shape"][0], time.perf_counter(), lat))
                    if len(rec.chunks) >= want:
                        return
    except (httpx.HTTPError, msgpack.UnpackException, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"


async def byte_viewer(client: httpx.AsyncClient, url: str, rec: ViewerRecord, until: float) -> None:
    """Read any stream's bytes until `until` (perf_counter); mp4 and mjpeg viewers in the format phases."""
    try:
        async with client.stream("GET", url) as r:
            if r.status_code != 200:
                rec.error = f"HTTP {r.status_code}"
                return
            async for piece in r.aiter_bytes():
                rec.bytes += len(piece)
                if time.perf_counter() >= until:
                    return
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"


async def steer(client: httpx.AsyncClient, sid: str, rate: float, stop: asyncio.Event, lat: list[float], errors: list[str]) -> None:
    """set_prompt at `rate` per second until `stop`; each command's answer time and any refusal."""
    if rate <= 0:
        return
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            r = await client.post(f"/v1/sessions/{sid}/commands", headers=AUTH,
                                  json={"command": "set_prompt", "args": {"prompt": f"load prompt {i}"}})
            if r.status_code >= 300:
                errors.append(f"command HTTP {r.status_code}")
            else:
                lat.append(time.perf_counter() - t0)
        except httpx.HTTPError as exc:
            errors.append(f"command {type(exc).__name__}")
        i += 1
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, 1.0 / rate - (time.perf_counter() - t0)))
        except asyncio.TimeoutError:
            pass


async def create_session(client: httpx.AsyncClient, prompt: str, timeout_s: float = 120.0) -> dict:
    """A started test-pattern session's creation body (polls while it is queued for a slot)."""
    r = await client.post("/v1/sessions", headers=AUTH, json={"model": "test-pattern", "seed": 1})
    r.raise_for_status()
    body = r.json()
    give_up = time.monotonic() + timeout_s
    while body["status"] != "active":
        if time.monotonic() > give_up:
            raise TimeoutError(f"session {body['session_id']} still {body['status']} after {timeout_s} s")
        await asyncio.sleep(0.25)  # polling the server's state, not synchronising the measurement
        body = {**body, **(await client.get(f"/v1/sessions/{body['session_id']}", headers=AUTH)).json()}
    sid = body["session_id"]
    for cmd in ({"command": "set_prompt", "args": {"prompt": prompt}}, {"command": "start", "args": {}}):
        (await client.post(f"/v1/sessions/{sid}/commands", headers=AUTH, json=cmd)).raise_for_status()
    return body


async def delete_sessions(client: httpx.AsyncClient, bodies: list[dict]) -> None:
    await asyncio.gather(*(client.delete(f"/v1/sessions/{b['session_id']}", headers=AUTH) for b in bodies),
                         return_exceptions=True)


def viewer_fps(rec: ViewerRecord) -> float | None:
    """Frames per second a viewer got after its first chunk (the live-edge prefill): `delivered_fps`."""
    return delivered_fps([(t, n) for _, n, t, _ in rec.chunks[1:]])


def relay_counters(relay) -> dict:
    """The relay's cumulative first-byte latency samples and counters (one replica: autoscaling is off)."""
    st = relay.stats.remote().result()
    return {"count": st["latency_s"]["count"], "samples": st["latency_samples_s"], "dropped": st["chunks_dropped"]}


def relay_since(before: dict, after: dict) -> dict:
    """The relay's generation end -> first viewer byte p50/p99 and chunks skipped for slow viewers between two reads."""
    n = after["count"] - before["count"]
    xs = after["samples"][-n:] if n > 0 else []
    p50, p99 = percentile(xs, 50), percentile(xs, 99)
    return {"relay_first_byte_p50_ms": None if p50 is None else round(1000 * p50, 1),
            "relay_first_byte_p99_ms": None if p99 is None else round(1000 * p99, 1),
            "relay_chunks": n, "relay_chunks_dropped": after["dropped"] - before["dropped"]}


async def load_step(base: str, sessions: int, viewers: int, chunks: int, rate: float, meter: ProcessMeter) -> tuple[Step, dict]:
    """One step: start `sessions`, `viewers` msgpack viewers each for `chunks` chunks, steer at `rate`; measure."""
    limits = httpx.Limits(max_connections=sessions * viewers + 4 * sessions + 16, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30.0, read=60.0), limits=limits) as client:
        bodies = await asyncio.gather(*(create_session(client, f"load session {i}") for i in range(sessions)))
        recs = [ViewerRecord(i) for i in range(sessions) for _ in range(viewers)]
        starts = [asyncio.Event() for _ in recs]
        stop = asyncio.Event()
        cmd_lat: list[float] = []
        errors: list[str] = []
        meter.start()
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(msgpack_viewer(
            client, bodies[r.session]["urls"]["stream_msgpack"], r, chunks + 1, ev)) for r, ev in zip(recs, starts)]
        steering = [asyncio.ensure_future(steer(client, b["session_id"], rate, stop, cmd_lat, errors)) for b in bodies]
        _, pending = await asyncio.wait(tasks, timeout=(chunks + 2) * CHUNK_S * 3 + 30)
        for t in pending:
            t.cancel()
        stop.set()
        await asyncio.gather(*steering, *pending, return_exceptions=True)
        wall = time.perf_counter() - t0
        procs = meter.stop()
        await delete_sessions(client, bodies)
    errors += [r.error for r in recs if r.error]
    short = sum(1 for r in recs if len(r.chunks) < chunks + 1)
    if short:
        errors.append(f"{short} viewer(s) got fewer than {chunks + 1} chunks")
    lats = [lat for r in recs for _, _, _, lat in r.chunks[1:] if lat is not None]
    per_session = []
    for i in range(sessions):
        rates = [f for r in recs if r.session == i and (f := viewer_fps(r)) is not None]
        per_session.append(sum(rates) / len(rates) / FPS if rates else 0.0)
    p99 = percentile(lats, 99)
    step = Step(sessions, viewers, round(min(per_session), 3), None if p99 is None else round(p99, 4), len(errors))
    detail = {
        "fps_ratio_per_session": [round(x, 3) for x in per_session],
        "p50_ms": None if not lats else round(1000 * percentile(lats, 50), 1),
        "p99_ms": None if p99 is None else round(1000 * p99, 1),
        "latency_n": len(lats),
        "command_p50_ms": None if not cmd_lat else round(1000 * percentile(cmd_lat, 50), 1),
        "command_p99_ms": None if not cmd_lat else round(1000 * percentile(cmd_lat, 99), 1),
        "commands": len(cmd_lat),
        "mb_per_s_in": round(sum(r.bytes for r in recs) / wall / 2**20, 2),
        "error_samples": errors[:3],
        "wall_s": round(wall, 2),
        "processes": procs,
    }
    return step, detail


async def format_phases(base: str, viewers: int, seconds: float, meter: ProcessMeter) -> list[dict]:
    """Relay CPU per viewer per video second for each format, one format at a time on one session."""
    out = []
    limits = httpx.Limits(max_connections=viewers + 16, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30.0, read=60.0), limits=limits) as client:
        body = await create_session(client, "relay cpu per format")
        # Keep the session from idling out while no viewer is attached (the idle phase): a message stream counts.
        keep = ViewerRecord(0, "msgpack")
        keep_task = asyncio.ensure_future(byte_viewer(client, body["urls"]["events"], keep, time.perf_counter() + 3600))
        try:
            for fmt in ("idle", "mp4", "mjpeg", "msgpack"):
                recs = [ViewerRecord(0, fmt) for _ in range(0 if fmt == "idle" else viewers)]
                meter.start()
                t0 = time.perf_counter()
                until = t0 + seconds
                url = body["urls"].get(f"stream_{fmt}")
                await asyncio.gather(*(byte_viewer(client, url, r, until) for r in recs),
                                     asyncio.sleep(max(0.0, until - time.perf_counter())))
                wall = time.perf_counter() - t0
                relay_s, door_s = meter.cpu_s("relay"), meter.cpu_s("front_door")
                meter.stop()
                n = max(1, len(recs))
                out.append({
                    "format": fmt, "viewers": len(recs), "video_s": round(wall, 2),
                    "relay_cores": round(relay_s / wall, 3),
                    "relay_cpu_s_per_viewer_per_video_s": round(relay_s / (n * wall), 4) if recs else None,
                    "front_door_cpu_s_per_viewer_per_video_s": round(door_s / (n * wall), 4) if recs else None,
                    "kb_per_s_per_viewer": round(sum(r.bytes for r in recs) / n / wall / 1024, 1) if recs else None,
                    "errors": sum(1 for r in recs if r.error),
                })
        finally:
            keep_task.cancel()
            await asyncio.gather(keep_task, return_exceptions=True)
            await delete_sessions(client, [body])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--sessions", default="1,2,4,8,16", help="session counts of the ramp")
    ap.add_argument("--viewers", default="1,4,16", help="viewers per session of the ramp")
    ap.add_argument("--chunks", type=int, default=8, help="chunks every viewer reads per step (after its first)")
    ap.add_argument("--command-rate", type=float, default=0.5, help="set_prompt per second per session")
    ap.add_argument("--size", type=int, default=128, help="frame height and width of the test pattern")
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--format-viewers", type=int, default=4, help="viewers per format in the relay CPU phases (0: skip)")
    ap.add_argument("--format-seconds", type=float, default=12.0)
    args = ap.parse_args()
    sessions = [int(x) for x in args.sessions.split(",")]
    viewers = [int(x) for x in args.viewers.split(",")]

    from ray import serve

    from deployments.app import build_app

    with local_cluster(**CPU_CLUSTER):
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(config(max(sessions), args.size)), name="helios", route_prefix="/")
        base = f"http://127.0.0.1:{args.port}"
        relay = serve.get_deployment_handle("Relay", "helios")
        meter = ProcessMeter()
        emit(bench="load", metric="setup", cpus=os.cpu_count(), load_avg=[round(x, 2) for x in os.getloadavg()],
             size=args.size, chunk_s=round(CHUNK_S, 4), command_rate=args.command_rate, chunks=args.chunks)

        if args.format_viewers > 0:
            for phase in asyncio.run(format_phases(base, args.format_viewers, args.format_seconds, meter)):
                emit(bench="load", metric="relay_cpu", **phase)

        details: dict[tuple[int, int], dict] = {}

        def measure(s: int, v: int) -> Step:
            before = relay_counters(relay)
            step, detail = asyncio.run(load_step(base, s, v, args.chunks, args.command_rate, meter))
            details[(s, v)] = detail
            emit(bench="load", metric="step", **asdict(step), passed=passes(step, CHUNK_S), **detail,
                 **relay_since(before, relay_counters(relay)), load_avg=round(os.getloadavg()[0], 2))
            return step

        steps = ramp(sessions, viewers, measure, CHUNK_S, max_steps=args.max_steps)
        knee = find_knee(steps, CHUNK_S)
        at = details.get((knee["knee"]["sessions"], knee["knee"]["viewers"])) if knee["knee"] else None
        emit(bench="load", metric="knee", **knee, steps=len(steps), load_avg=[round(x, 2) for x in os.getloadavg()],
             knee_p50_ms=at and at["p50_ms"], knee_p99_ms=at and at["p99_ms"], knee_processes=at and at["processes"])


if __name__ == "__main__":
    main()
