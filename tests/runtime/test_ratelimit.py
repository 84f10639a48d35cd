"""TokenBucket: burst, sustained rate, retry_after_s, on a clock the test moves by hand."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from helios.runtime import FakeClock
from helios.runtime.ratelimit import RateLimited, RateLimitSpec, TokenBucket


def test_defaults_are_twenty_per_second_burst_forty():
    spec = RateLimitSpec()
    assert (spec.rate_per_s, spec.burst) == (20.0, 40)
    bucket = TokenBucket(clock=FakeClock())
    assert (bucket.rate_per_s, bucket.burst) == (20.0, 40)


def test_burst_then_refused_until_refilled():
    clock = FakeClock()
    bucket = TokenBucket(20.0, 40, clock=clock)
    assert all(bucket.try_acquire() for _ in range(40))
    assert bucket.try_acquire() is False
    assert bucket.retry_after_s() == pytest.approx(0.05)
    clock.advance(0.049)
    assert bucket.try_acquire() is False
    assert bucket.retry_after_s() == pytest.approx(0.001)
    clock.advance(0.001)
    assert bucket.retry_after_s() == 0.0
    assert bucket.try_acquire() is True
    assert bucket.try_acquire() is False


def test_sustained_rate_is_the_configured_rate():
    clock = FakeClock()
    bucket = TokenBucket(20.0, 40, clock=clock)
    for _ in range(40):
        bucket.acquire()
    accepted = 0
    for _ in range(1000):  # 10 s of offers at 100/s
        clock.advance(0.01)
        accepted += bucket.try_acquire()
    assert accepted == pytest.approx(200, abs=1)


def test_refill_never_exceeds_burst():
    clock = FakeClock()
    bucket = TokenBucket(5.0, 3, clock=clock)
    clock.advance(3600)
    assert bucket.tokens == 3.0
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_acquire_raises_naming_the_limit_and_the_wait():
    clock = FakeClock()
    bucket = TokenBucket(2.0, 1, clock=clock, limit="command_rate")
    bucket.acquire()
    with pytest.raises(RateLimited) as err:
        bucket.acquire()
    assert err.value.limit == "command_rate"
    assert err.value.retry_after_s == pytest.approx(0.5)
    assert "command_rate" in str(err.value) and "2 commands/s" in str(err.value) and "burst 1" in str(err.value)
    assert bucket.retry_after_header() == 1  # HTTP Retry-After: whole seconds, at least 1
    clock.advance(0.5)
    bucket.acquire()


def test_retry_after_header_rounds_up():
    clock = FakeClock()
    bucket = TokenBucket(0.25, 1, clock=clock)
    bucket.acquire()
    assert bucket.retry_after_s() == pytest.approx(4.0)
    clock.advance(0.5)
    assert bucket.retry_after_header() == 4  # 3.5 s -> 4


def test_a_refused_offer_takes_nothing():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2, clock=clock)
    bucket.acquire(2)
    clock.advance(0.5)
    assert not bucket.try_acquire()
    assert bucket.tokens == pytest.approx(0.5)


def test_a_plain_callable_is_a_clock_too_and_time_going_back_adds_nothing():
    now = [100.0]
    bucket = TokenBucket(10.0, 1, clock=lambda: now[0])
    assert bucket.try_acquire()
    now[0] = 50.0
    assert not bucket.try_acquire()
    assert bucket.tokens == 0.0


@pytest.mark.parametrize("kwargs", [{"rate_per_s": 0}, {"rate_per_s": -1}, {"burst": 0}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValidationError):
        TokenBucket(**{"rate_per_s": 20.0, "burst": 40, **kwargs}, clock=FakeClock())


def test_token_count_out_of_range_is_refused():
    bucket = TokenBucket(1.0, 2, clock=FakeClock())
    with pytest.raises(ValueError, match="tokens"):
        bucket.try_acquire(3)
    with pytest.raises(ValueError, match="tokens"):
        bucket.acquire(0)


def test_concurrent_takers_never_exceed_the_burst():
    bucket = TokenBucket(1.0, 500, clock=FakeClock())  # time stands still: exactly 500 tokens
    taken: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [bucket.try_acquire() for _ in range(100)]
        with lock:
            taken.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(taken) == 500
