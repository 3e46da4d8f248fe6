"""Fixtures of the fault scenarios: `database`/`db` come from tests/conftest.py; the private
PostgreSQL server that a scenario may crash comes from tests/eventlog/test_writer_outage.py."""

from __future__ import annotations

from tests.eventlog.test_writer_outage import PrivateServer, private_server

__all__ = ["PrivateServer", "private_server"]
