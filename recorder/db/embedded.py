"""The embedded PostgreSQL server (the `pgserver` package), kept under the state directory.

pgserver shares one server between all processes that open the same data directory and stops it
when the last of them releases it, so `recorder status` can run beside `recorder run`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from recorder.db import sql
from recorder.errors import ConfigError, EmbeddedPostgresError
from recorder.logs import event

log = logging.getLogger(__name__)

DATABASE_NAME = "recorder"
#: pgserver's list of processes using the server; the last one to leave stops it.
HANDLES_FILE = ".handle_pids.json"


def forget_dead_handles(path: Path) -> list[int]:
    """Drop processes that died without releasing the server (kill -9, a watchdog abort).

    Otherwise their pids stay in the list for good, no later process is ever the last one,
    and nobody stops the server: each stop then ends in a SIGKILL and crash recovery.
    Call it under pgserver's lock. Returns the pids dropped.
    """
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
        log.info("embedded PostgreSQL: forgot %d exited processes", len(pids) - len(alive),
                 extra=event("embedded.handles.pruned"))
    return [pid for pid in pids if pid not in alive]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def prepare_state_dir(state_dir: Path) -> Path:
    """The state directory, created if missing and proven writable; else a ConfigError.

    Checked by writing, not by permission bits: root passes every access check, yet a
    read-only mount still refuses it.
    """
    setting = "RECORDER_STATE_DIR"
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(setting, f"{str(state_dir)!r} is not a directory")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir, prefix=".recorder-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            setting, f"{str(state_dir)!r} is not a writable directory: {exc.strerror}"
        ) from exc
    return state_dir


class EmbeddedPostgres:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.data_dir = (state_dir / "postgres").resolve()
        self._server: Any = None

    async def start(self) -> str:
        """Start (or join) the server and return a URL for the `recorder` database."""
        prepare_state_dir(self.state_dir)
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
            from pgserver.postgres_server import PostgresServer, get_server

        with PostgresServer._lock:
            forget_dead_handles(self.data_dir / HANDLES_FILE)
        server = get_server(self.data_dir, cleanup_mode="stop")
        exists = server.psql(sql.DATABASE_EXISTS.format(name=DATABASE_NAME))
        if "1 row" not in exists:
            server.psql(sql.CREATE_DATABASE.format(name=DATABASE_NAME))
        return server

    async def stop(self) -> None:
        """Release this process's handle; the server stops when no process uses it any more."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.cleanup)
            log.info("released embedded PostgreSQL in %s", self.data_dir,
                     extra=event("embedded.released"))
