"""The one retry policy for database work: which errors an outage raises, and how long to
wait before the next attempt. The writer and the projector both follow it."""

from __future__ import annotations

import random

import asyncpg

#: Errors that a later attempt on a fresh connection may not meet: an outage, not a bug.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection killed mid-protocol
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.exceptions.LockNotAvailableError,
)


def backoff_s(attempt: int, max_s: float) -> float:
    """Seconds before attempt `attempt + 1`: 0.1 s doubling up to `max_s`, jittered down by up
    to half so that many processes do not retry in step."""
    delay: float = min(max_s, 0.1 * 2.0 ** min(attempt, 10))
    return delay * random.uniform(0.5, 1.0)
