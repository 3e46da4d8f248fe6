"""What a DatabaseTarget asks of asyncpg: behind a transaction-pooling PgBouncer, no named
prepared statements and only the session settings PgBouncer tracks; otherwise as given."""

from __future__ import annotations

import dataclasses

from recorder.config import load_settings
from recorder.db.target import DatabaseTarget, open_database

SETTINGS = {"synchronous_commit": "on", "timezone": "UTC", "application_name": "x"}


def test_a_direct_target_passes_options_through() -> None:
    target = DatabaseTarget(dsn="postgresql://h/d", embedded=False)
    assert target.connect_options(server_settings=SETTINGS, timeout=3) == {
        "server_settings": SETTINGS, "timeout": 3}


def test_a_pooled_target_keeps_no_statements_and_only_tracked_settings() -> None:
    target = DatabaseTarget(dsn="postgresql://h/d", embedded=False, pooled=True)
    assert target.connect_options(server_settings=SETTINGS, timeout=3) == {
        "server_settings": {"timezone": "UTC", "application_name": "x"},
        "statement_cache_size": 0, "timeout": 3}
    assert target.connect_options() == {"statement_cache_size": 0}


async def test_the_setting_makes_the_target_pooled() -> None:
    settings = load_settings(environ={
        "RECORDER_DATABASE_URL": "postgresql://recorder@127.0.0.1:6432/recorder",
        "RECORDER_DATABASE_POOLING": "transaction"})
    async with open_database(settings) as target:
        assert target.pooled and not target.embedded
    settings = dataclasses.replace(settings, database_pooling="session")
    async with open_database(settings) as target:
        assert not target.pooled
