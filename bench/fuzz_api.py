"""A long schemathesis run against the live OpenAPI of the real app: random seeds, many more cases than CI.

Starts a local Ray cluster and `serve.run` of the real app (test-pattern model, a fuzz tenant,
an admin key), or fuzzes a running server given `--url` and `--key` (a tenant key of its own:
the run creates and deletes sessions of that tenant; `--admin-key` adds the admin routes).
Repeats rounds until `--duration` seconds have passed, each with a new random seed: every
operation with `--examples` positive and negative cases, then `--examples` stateful
scenarios of `--steps` calls along the schema's links. The checks are those of
tests/serve/test_api_fuzz.py (tests/serve/api_fuzz.py): no 5xx, every 4xx a JSON body
with `detail`, answers conforming to the schema.

Prints one JSON line per round and a summary line: cases, statuses, 5xx, failures by kind
(the first few failures in full, with a curl command each). Exits 1 on any failure.

Usage: python bench/fuzz_api.py [--duration 300] [--examples 40] [--steps 8] [--port 8797]
       python bench/fuzz_api.py --url http://127.0.0.1:8000 --key <tenant key> [--admin-key <key>]
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serve.api_fuzz, when run as a script

from served_app import CPU_CLUSTER, local_cluster  # noqa: E402

from tests.serve.api_fuzz import ApiFuzzer, FuzzReport, FuzzTarget  # noqa: E402

FUZZ_KEY = "fuzz-key-0123456789"
ADMIN_KEY = "fuzz-admin-key-0123456789"


def fuzz_config():
    """The app under fuzz: a test-pattern pool of 2 (queue 1, so 202 and 429 answers happen), default limits otherwise."""
    from deployments.config import ServingConfig

    return ServingConfig.model_validate({
        "app_name": "helios",
        "default_model": "test-pattern",
        "models": {"test-pattern": {"kind": "test-pattern", "pool_size": 2, "options": {"height": 64, "width": 64}}},
        "tenants": [{"name": "fuzz", "api_keys": [FUZZ_KEY], "quota": {"max_concurrent_sessions": 2}}],
        "admin_keys": [ADMIN_KEY],
        "queue_size": 1,
        "front_door": {"num_cpus": 0.1, "autoscaling": None},
        "relay": {"num_cpus": 0.1, "autoscaling": None},
    })


@contextmanager
def started_app(port: int) -> Iterator[FuzzTarget]:
    """The app of `fuzz_config` served on `port` once its pool is warm; shut down on exit."""
    import httpx
    from ray import serve

    from deployments.app import build_app

    with local_cluster(**CPU_CLUSTER):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(fuzz_config()), name="helios", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while httpx.get(f"{base}/readyz", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the fuzzed app never became ready")
            time.sleep(1)
        yield FuzzTarget(base_url=base, tenant_key=FUZZ_KEY, admin_key=ADMIN_KEY)


def run_rounds(target: FuzzTarget, duration_s: float, examples: int, steps: int) -> tuple[FuzzReport, int]:
    """Rounds with fresh random seeds until `duration_s` is spent: (the whole run's report, rounds run)."""
    fuzzer = ApiFuzzer(target)
    rounds = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < duration_s:
            seed = secrets.randbelow(2**32)  # a fresh seed per round (secrets: bandit B311 flags random)
            before = Counter(fuzzer.report.statuses)
            fuzzer.run_stateless(examples, seed=seed)
            fuzzer.run_stateful(examples, steps=steps, seed=seed)
            rounds += 1
            round_statuses = fuzzer.report.statuses - before
            print(json.dumps({"round": rounds, "seed": seed, "cases": sum(round_statuses.values()),
                              "statuses": {str(k): v for k, v in sorted(round_statuses.items())},
                              "failures_so_far": len(fuzzer.report.failures), "elapsed_s": round(time.monotonic() - started, 1)}),
                  flush=True)
    finally:
        fuzzer.close()
    return fuzzer.report, rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of fuzzing (whole rounds; the last may run over)")
    ap.add_argument("--examples", type=int, default=40, help="cases per operation and mode, and stateful scenarios, per round")
    ap.add_argument("--steps", type=int, default=8, help="calls per stateful scenario")
    ap.add_argument("--port", type=int, default=8797, help="port of the app this script starts")
    ap.add_argument("--url", help="fuzz this running server instead of starting one")
    ap.add_argument("--key", help="with --url: a tenant API key the run may create and delete sessions with")
    ap.add_argument("--admin-key", help="with --url: an admin key (the admin routes are read-only)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    if args.url:
        if not args.key:
            ap.error("--url needs --key")
        report, rounds = run_rounds(FuzzTarget(args.url.rstrip("/"), args.key, args.admin_key), args.duration, args.examples, args.steps)
    else:
        with started_app(args.port) as target:
            report, rounds = run_rounds(target, args.duration, args.examples, args.steps)
    summary = {"bench": "fuzz_api", "rounds": rounds, "seconds": round(time.monotonic() - started, 1), **report.summary(),
               "first_failures": report.failures[:5]}
    print(json.dumps(summary), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
