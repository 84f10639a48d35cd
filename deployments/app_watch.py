"""Watching the Serve app from the registry: Serve does not stop detached actors, so the registry does.

Split out of deployments/registry.py (one job: conclude, from Serve's answers only, that the
app is gone, then shut the registry's sessions down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray import serve
from ray.serve.schema import ApplicationStatus

logger = logging.getLogger(__name__)

APP_WATCH_PERIOD_S = 3.0


def app_gone(app_name: str) -> bool | None:
    """Whether Serve says app `app_name` is gone (absent or DELETING): True / False from an answer,
    None when there was none (blocking: a GCS and controller round trip)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        apps = serve.status().applications
    except Exception as exc:  # noqa: BLE001 - any failure of the call is "no answer", decided below
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # an answer: no Serve controller exists, so no app either
            return True
        except Exception as lookup_exc:  # noqa: BLE001 - the GCS did not answer either
            logger.info("serve.status failed (%s) and the controller lookup too (%s): no answer", exc, lookup_exc)
            return None
        logger.info("serve.status failed (%s): no answer, asking again", exc)
        return None
    app = apps.get(app_name)
    return app is None or app.status == ApplicationStatus.DELETING  # a str enum: str() of it is "ApplicationStatus.DELETING"


class AppWatcher:
    """The SessionRegistry's app watch (a mixin, as RegistryReaders)."""

    config: Any
    _shutting_down: bool
    shutdown: Callable[..., Awaitable[int]]

    async def _watch_app(self) -> None:
        """Serve does not stop detached actors: end the sessions ourselves once the app is gone.

        Concluded only from answers, two in a row: Serve answered and the app is absent or
        DELETING (or no Serve controller exists). A status call that fails says nothing (a
        Serve controller restarting, a GCS hiccup, this registry's node busy) and is asked again.
        """
        gone_answers = 0
        while not self._shutting_down:
            await asyncio.sleep(APP_WATCH_PERIOD_S)
            gone = await asyncio.to_thread(app_gone, self.config.app_name)
            if gone is None:
                continue
            gone_answers = gone_answers + 1 if gone else 0
            if gone_answers >= 2:
                logger.info("Serve app %s is gone: shutting down its sessions", self.config.app_name)
                await self.shutdown("server_shutdown", exit_actor=True)
                return
