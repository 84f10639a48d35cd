"""HLS player leases (deployments/http/hls_players.py) without a cluster: a player that stops pulling gives
its reader slot back on time even when no other HLS request reaches the replica (found by the soak: a
lease held until some later request, and the registry's reader table not empty once every session ended)."""

from __future__ import annotations

import asyncio

from deployments.http.hls_players import HlsPlayers


class CountedLease:
    """Stands for a ReaderLease: records its release (the registry call is what tests/serve/test_hls.py covers)."""

    def __init__(self, released: asyncio.Event):
        self.released = released

    def release(self) -> None:
        self.released.set()


def test_a_player_that_stops_pulling_is_released_without_another_request():
    async def scenario() -> tuple[bool, int, bool, int]:
        players = HlsPlayers(idle_s=0.3)
        released = asyncio.Event()

        async def open_lease() -> CountedLease:
            return CountedLease(released)

        await players.touch(("s", "127.0.0.1", "hls.js"), open_lease)
        held_at_once = len(players)
        renewed_early = released.is_set()
        await asyncio.wait_for(released.wait(), 10)  # the condition asserted, not a sleep: released by the sweep alone
        return renewed_early, held_at_once, released.is_set(), len(players)

    renewed_early, held_at_once, released, left = asyncio.run(scenario())
    assert held_at_once == 1 and not renewed_early
    assert released and left == 0


def test_a_player_still_pulling_keeps_its_one_lease():
    async def scenario() -> tuple[int, int]:
        players = HlsPlayers(idle_s=0.5)
        opened = []

        async def open_lease() -> CountedLease:
            opened.append(CountedLease(asyncio.Event()))
            return opened[-1]

        key = ("s", "127.0.0.1", "hls.js")
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5  # three idle periods of pulls every 0.1 s
        while loop.time() < end:
            await players.touch(key, open_lease)
            await asyncio.sleep(0.1)  # the player's pull period, not a synchronisation
        still = sum(not lease.released.is_set() for lease in opened)
        return len(opened), still

    opened, still = asyncio.run(scenario())
    assert opened == 1 and still == 1
