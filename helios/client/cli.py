"""The `helios` command: serve, generate, session create|get|command|watch|delete, play, check, models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from helios.client.errors import HeliosError
from helios.client.sync import HeliosClient, HeliosSession
from helios.client.types import Chunk, Message
from helios.dtypes import DTYPE_NAMES

log = logging.getLogger("helios.cli")


def _client(args: argparse.Namespace) -> HeliosClient:
    return HeliosClient(args.url, args.api_key)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _on_queue(position: int | None) -> None:
    print(f"queued: position {position}", file=sys.stderr)


# -- serve --------------------------------------------------------------------------------
def _end_unless_kept(session: Any, args: argparse.Namespace) -> None:
    """Delete the session a command created, unless --keep; a failed delete is only a warning."""
    if args.keep:
        return
    try:
        session.delete()
    except HeliosError as exc:
        log.warning("could not delete session %s: %s", session.id, exc)


def cmd_serve(args: argparse.Namespace) -> int:
    """Exec `serve run serve_config.yaml`, exactly what scripts/serve.sh runs."""
    config = Path(args.config)
    if not config.is_file():
        raise ValueError(f"config: {str(config)!r} not found (run from the repository root or pass --config)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    serve_bin = shutil.which("serve", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    argv = [serve_bin, "run", str(config)] if serve_bin else [sys.executable, "-m", "ray.serve.scripts", "run", str(config)]
    argv += args.extra
    print("running: " + " ".join(argv), file=sys.stderr)
    os.execv(argv[0], argv)
    return 0  # not reached


# -- generate -----------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    """Create a session, prompt it, record N chunks to an mp4 with a progress bar, delete it."""
    from tqdm import tqdm

    if args.chunks < 1:
        raise ValueError(f"--chunks: expected a positive number of chunks, got {args.chunks}")
    with _client(args) as client:
        session = client.create_session(args.model, seed=args.seed, on_queue=_on_queue, retry_busy_s=args.wait_busy)
        print(f"session {session.id} ({session.info.model})", file=sys.stderr)
        try:
            session.set_prompt(args.prompt)
            if args.image:
                session.set_image(args.image, args.transition)
            session.start()
            bar = tqdm(total=args.chunks, unit="chunk", desc="generating", file=sys.stderr,
                       disable=args.quiet, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} chunks "
                       "[{elapsed}<{remaining}{postfix}]")
            started = time.monotonic()
            frames = 0

            def on_chunk(chunk: Chunk) -> None:
                nonlocal frames
                frames += chunk.num_frames
                fps = frames / max(time.monotonic() - started, 1e-6)
                bar.set_postfix_str(f"{fps:.1f} fps")
                if (chunk.first_frame + chunk.num_frames) % args.frames_per_chunk == 0:
                    bar.update(1)

            written = session.save_mp4(args.output, chunks=args.chunks, on_chunk=on_chunk,
                                       timeout=args.timeout, frames_per_chunk=args.frames_per_chunk)
            bar.close()
        finally:
            _end_unless_kept(session, args)
    print(f"wrote {written} frames to {args.output}", file=sys.stderr)
    return 0


# -- session ------------------------------------------------------------------------------
def _parse_kv(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {pair!r}: expected key=value (e.g. prompt='a cat' or chunk=3)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_session(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "create":
            session = client.create_session(args.model, seed=args.seed, on_queue=_on_queue, wait=not args.no_wait,
                                            retry_busy_s=args.wait_busy)
            _print_json(session.info.model_dump(exclude_none=True))
        elif args.action == "get":
            _print_json(client.get_session(args.session_id, token=args.token).model_dump(exclude_none=True))
        elif args.action == "delete":
            _print_json(client.delete_session(args.session_id).model_dump(exclude_none=True))
        elif args.action == "rotate-token":
            _print_json(client.rotate_viewer_token(args.session_id).model_dump(exclude_none=True))
        elif args.action == "command":
            session = client.session(args.session_id)
            if args.name == "set_image":
                kv = _parse_kv(args.args)
                if "image" not in kv:
                    raise ValueError("set_image: pass image=<path> (and optionally transition=blend)")
                ack = session.set_image(str(kv["image"]), kv.get("transition", "cut"))
            else:
                ack = session.command(args.name, _parse_kv(args.args))
            _print_json(ack.model_dump())
        elif args.action == "watch":
            session = client.session(args.session_id, token=args.token)
            after = -1 if args.replay else None
            for msg in session.messages(after=after):
                print(json.dumps({"seq": msg.seq, "type": msg.type, "data": msg.data}), flush=True)
    return 0


# -- play ---------------------------------------------------------------------------------
def cmd_play(args: argparse.Namespace) -> int:
    from helios.client.timeline import load_timeline, play

    timeline, base_dir = load_timeline(args.timeline)
    if args.chunks is not None:
        timeline.chunks = args.chunks
    with _client(args) as client:
        model = args.model or timeline.model
        seed = args.seed if args.seed is not None else timeline.seed
        session = client.create_session(model, seed=seed, on_queue=_on_queue, retry_busy_s=args.wait_busy)
        print(f"session {session.id}: playing {timeline.total_chunks} chunks", file=sys.stderr)
        recorder = None
        if args.output:
            recorder = _Recorder(session, args.output, timeline.total_chunks)
        try:
            def show(msg: Message) -> None:
                if msg.event in ("prompt_switched", "chunk_complete", "error", "image_set"):
                    print(json.dumps({"type": msg.type, "data": msg.data}), flush=True)

            if recorder:
                recorder.start()
            report = play(session, timeline, base_dir, on_message=show, timeout=args.timeout)
            if recorder:
                recorder.join()
        finally:
            _end_unless_kept(session, args)
    for chunk, prompt in report.switches:
        print(f"chunk {chunk}: switched to {prompt!r}", file=sys.stderr)
    return 1 if report.errors else 0


class _Recorder(threading.Thread):
    """Records the frame stream to an mp4 beside the message loop of `play`."""

    def __init__(self, session: HeliosSession, path: str, chunks: int) -> None:
        super().__init__(daemon=True)
        self.session, self.path, self.chunks = session, path, chunks
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.session.save_mp4(self.path, chunks=self.chunks, timeout=120)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error:
            raise self.error


# -- check / models -----------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from helios.client.check import check

    report = check(args.preset, args.tp, args.dtype)
    if args.json:
        _print_json(report)
        return 0
    dev, plan = report["device"], report["plan"]
    gpus = dev.get("gpus") or []
    print(f"device:   {dev['device']}" + (f" ({len(gpus)}x {gpus[0]['name']}, {gpus[0]['memory_gib']} GiB)" if gpus
                                          else f" ({dev.get('cpu_count')} cores, {dev.get('memory_gib', '?')} GiB RAM)"))
    print(f"preset:   {args.preset}  ({plan['params_total']:,} parameters, {plan['dtype']})")
    print(f"TP plan:  {plan['tp']} ranks; {plan['heads_per_rank']} heads and {plan['ffn_per_rank']} FFN columns per rank; "
          f"{plan['allreduces_per_forward']} all-reduces of {plan['allreduce_mb']} MB per forward "
          f"({plan['tokens_per_forward']:,} tokens)")
    print(f"per rank: {plan['params_per_rank']:,} parameters = {plan['weights_gib_per_rank']} GiB weights "
          f"+ ~{plan['activations_gib_per_rank']} GiB activations = ~{plan['total_gib_per_rank']} GiB")
    print(f"verdict:  {report['verdict']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.models())
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios", description="Helios Serve: serve, generate and control video sessions.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def busy(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait-busy", type=float, default=0.0, metavar="SECONDS",
                       help="when the server is full (429), keep retrying this long")

    def conn(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("HELIOS_URL", "http://127.0.0.1:8000"),
                       help="server URL (env HELIOS_URL)")
        p.add_argument("--api-key", default=os.environ.get("HELIOS_API_KEY"), help="API key (env HELIOS_API_KEY)")

    p = sub.add_parser("serve", help="run the embedded default server (serve run serve_config.yaml)")
    p.add_argument("--config", default="serve_config.yaml", help="Ray Serve config file")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="extra arguments for `serve run`")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="generate N chunks into an .mp4")
    conn(p)
    busy(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("-o", "--output", default="helios.mp4")
    p.add_argument("--model", default="helios-tiny")
    p.add_argument("--seed", type=int)
    p.add_argument("--image", help="reference image (resized and compressed for you)")
    p.add_argument("--transition", choices=["cut", "blend"], default="cut")
    p.add_argument("--frames-per-chunk", type=int, default=33)
    p.add_argument("--timeout", type=float, default=300.0, help="give up if no frames arrive for this long (s)")
    p.add_argument("--keep", action="store_true", help="do not delete the session afterwards")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("session", help="create, inspect, command, watch or delete sessions")
    ss = p.add_subparsers(dest="action", required=True)
    q = ss.add_parser("create", help="create a session; prints its id, viewer token and URLs")
    conn(q)
    busy(q)
    q.add_argument("--model")
    q.add_argument("--seed", type=int)
    q.add_argument("--no-wait", action="store_true", help="return at once when queued")
    q = ss.add_parser("get", help="show a session")
    conn(q)
    q.add_argument("session_id")
    q.add_argument("--token", help="viewer token instead of the API key")
    q = ss.add_parser("command", help="send a command: helios session command ID set_prompt prompt='a cat'")
    conn(q)
    q.add_argument("session_id")
    q.add_argument("name", help="set_prompt, schedule_prompt, set_image, start, pause, resume, reset, set_seed, get_state")
    q.add_argument("args", nargs="*", help="key=value arguments (values parsed as JSON when they can be)")
    q = ss.add_parser("watch", help="print the session's messages as JSON lines until it ends")
    conn(q)
    q.add_argument("session_id")
    q.add_argument("--token", help="viewer token instead of the API key")
    q.add_argument("--replay", action="store_true", help="start from the oldest message the server still has")
    q = ss.add_parser("delete", help="end a session")
    conn(q)
    q.add_argument("session_id")
    q = ss.add_parser("rotate-token", help="issue a new viewer token (the old one stops working); prints it and the new URLs")
    conn(q)
    q.add_argument("session_id")
    p.set_defaults(func=cmd_session)

    p = sub.add_parser("play", help="play a prompt timeline (YAML: chunk -> prompt/image) into a new session")
    conn(p)
    busy(p)
    p.add_argument("timeline")
    p.add_argument("--model", help="overrides the file's model")
    p.add_argument("--seed", type=int)
    p.add_argument("--chunks", type=int, help="overrides the file's chunk count")
    p.add_argument("-o", "--output", help="also record the stream to this .mp4")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--keep", action="store_true")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("check", help="device, TP plan and memory per rank for a preset")
    p.add_argument("--preset", default="14b", help="14b or tiny")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per session")
    p.add_argument("--dtype", default="bf16", choices=DTYPE_NAMES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("models", help="list the server's models")
    conn(p)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HeliosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
