"""The one retry policy of database work (recorder.db.retry)."""

from __future__ import annotations

from recorder.db.retry import TRANSIENT_ERRORS, backoff_s


def test_backoff_doubles_to_its_ceiling_with_jitter_below() -> None:
    for attempt, full in [(0, 0.1), (1, 0.2), (3, 0.8), (6, 5.0), (40, 5.0)]:
        delays = [backoff_s(attempt, 5.0) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays), attempt
        assert len(set(delays)) > 1, "jittered, so processes do not retry in step"


def test_an_outage_is_transient_and_a_bug_is_not() -> None:
    import asyncpg

    assert issubclass(asyncpg.exceptions.AdminShutdownError, TRANSIENT_ERRORS)
    assert issubclass(ConnectionRefusedError, TRANSIENT_ERRORS)
    assert not issubclass(asyncpg.exceptions.UndefinedTableError, TRANSIENT_ERRORS)
    assert not issubclass(asyncpg.exceptions.UniqueViolationError, TRANSIENT_ERRORS)
