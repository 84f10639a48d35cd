"""Start a private local Ray cluster on a busy machine: the test suite's and the benchmarks' one `ray.init`."""

from __future__ import annotations

import contextlib
import logging

import psutil
import ray

logger = logging.getLogger(__name__)


def start_local_ray(*, tries: int, **init) -> None:
    """`ray.init(**init)`, tried again (after a shutdown) when only the raylet's registration timed out.

    The error is Ray's "The current node timed out during startup": its processes start, but the
    GCS has not heard from the raylet within a hard-coded 30 s (ray/_private/node.py, not
    configurable), which a loaded 2-core machine can miss. Any other failure is raised at once;
    the last try's is raised too. The failed node's processes are stopped before the next try.
    """
    for attempt in range(1, tries + 1):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            ray.init(**init)
            return
        except Exception as exc:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(exc) or attempt == tries:
                raise
            logger.warning("ray.init try %d of %d: %s; starting again", attempt, tries, exc)
            ray.shutdown()
            # The failed node's processes (GCS, raylet, ...) are nobody's now: stop them.
            for proc in psutil.Process().children(recursive=True):
                if proc.pid not in before:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
