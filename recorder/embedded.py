"""The embedded PostgreSQL server (the `pgserver` package), kept under the state directory.

pgserver shares one server between all processes that open the same data directory and stops it
when the last of them releases it, so `recorder status` can run beside `recorder run`.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

from recorder.errors import EmbeddedPostgresError
from recorder.logs import event

log = logging.getLogger(__name__)

DATABASE_NAME = "recorder"


class EmbeddedPostgres:
    def __init__(self, state_dir: Path) -> None:
        self.data_dir = (state_dir / "postgres").resolve()
        self._server: Any = None

    async def start(self) -> str:
        """Start (or join) the server and return a URL for the `recorder` database."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot create the embedded PostgreSQL directory {self.data_dir}: {exc.strerror}"
            ) from exc
        try:
            self._server = await asyncio.to_thread(self._start_blocking)
        except EmbeddedPostgresError:
            raise
        except Exception as exc:  # pgserver raises bare exceptions and CalledProcessError
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {self.data_dir} failed to start: {exc}"
            ) from exc
        url: str = self._server.get_uri(DATABASE_NAME)
        log.info("using embedded PostgreSQL in %s", self.data_dir, extra=event("embedded.started"))
        return url

    def _start_blocking(self) -> Any:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (services, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            # late: it takes locks and registers atexit handlers on import
            from pgserver.postgres_server import get_server

        server = get_server(self.data_dir, cleanup_mode="stop")
        exists = server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"
        )
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        return server

    async def stop(self) -> None:
        """Release this process's handle; the server stops when no process uses it any more."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.cleanup)
            log.info("released embedded PostgreSQL in %s", self.data_dir,
                     extra=event("embedded.released"))
