"""Environment that puts Serve in direct-ingress mode (HAProxy in front, replicas serve HTTP themselves).

Why: behind Serve's Python proxy the front door's ASGI `send` never blocks (Serve queues every
message and the proxy call has no generator backpressure), so a viewer that stops reading grows
the object store without bound (docs/limits.md, "Bytes in flight per viewer"). With direct
ingress the front door's uvicorn `send` waits on the socket, so the bounded front-door buffer,
the skip-forward and `viewer_stall_timeout_s` apply. User code must then run on the replica's
own loop (`RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`): in a separate thread Serve puts a
non-blocking queue between `send` and the socket again.

The variables must be in the environment of the process that starts Ray (Serve reads them at
import time in every Ray worker). Ports and paths are derived from the HTTP port so two
clusters on one machine (tests of parallel checkouts) never collide.

Run `python -m deployments.ingress_env PORT` to print them as `export` lines (scripts/serve.sh).
"""

from __future__ import annotations

import sys


def direct_ingress_env(http_port: int) -> dict[str, str]:
    """The variables for a Serve cluster whose HTTP entry point (HAProxy) listens on `http_port`."""
    state = f"/tmp/haproxy-serve-{http_port}"
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        # Serve's defaults are fixed (8500, 9500, 9101, 8404, /tmp/haproxy-serve): offset from the port.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(http_port + 500),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(http_port + 1500),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(http_port + 1101),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(http_port + 404),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
    }


def main(argv: list[str]) -> int:
    """Print the variables as shell `export` lines for the port in argv[1] (default 8000)."""
    port = int(argv[1]) if len(argv) > 1 else 8000
    for key, value in direct_ingress_env(port).items():
        sys.stdout.write(f"export {key}={value}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
