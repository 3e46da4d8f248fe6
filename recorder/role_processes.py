"""The roles as processes: one supervisor process runs each role in a process of its own.

`recorder run` is the supervisor, which is what systemd sees. It opens the database (starting
the embedded server when none is configured), then starts `project`, `ingest` and
`RECORDER_API_WORKERS` times `serve` as child processes of the same program
(`recorder run` with the supervisor's own flags, its role in `RECORDER_RUN_ROLE`, told by
`ROLE_PROCESS_ENV` that it is supervised; a configured database URL is read again by each
role, never passed in its environment). The roles meet only in PostgreSQL.

- **Readiness and health.** Each child speaks sd_notify to a socket of the supervisor's
  (`NOTIFY_SOCKET`, with its own `WATCHDOG_USEC`), exactly as it would to systemd when run
  alone. The supervisor says READY=1 once every child did, sends WATCHDOG=1 only while every
  running child pinged within `HUNG_AFTER_S`, and sums their STATUS lines up in its own.
  A child silent for `KILL_HUNG_AFTER_S` is killed (SIGABRT: Python prints its stacks) and
  restarted.
- **Restarts.** A child that ends unasked is restarted after a backoff (0.5 s doubling to
  30 s, reset once it ran for a minute), logged, counted in `/metrics`
  (`recorder_role_restarts`) and in `recorder status` (the roles file). Exit code 2 (a
  setting a restart cannot fix) stops everything with exit 2 instead.
- **Stop.** SIGTERM drains in order — serve, ingest, project — each group with its budget,
  SIGKILL past it. A second SIGTERM is passed on: the children hurry (recorder.daemon).
- Children get SIGKILL from the kernel should the supervisor die (PR_SET_PDEATHSIG): the
  service dies as one, as a `kill -9` of a single process would, and loses nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from recorder.logs import ROLE_PROCESS_ENV, event
from recorder.metrics import RoleMetrics, process_ended
from recorder.notify import Notifier

log = logging.getLogger(__name__)

#: Stop order, and how long each group may take to drain after SIGTERM.
DRAIN_ORDER = ("serve", "ingest", "project")
#: Each at least the sum of that role's own components' drain budgets (recorder/app.py).
DRAIN_BUDGET_S = {"serve": 15.0, "ingest": 70.0, "project": 110.0}
#: Children ping every CHILD_WATCHDOG_S / 2; silent this long is unhealthy, then hung.
CHILD_WATCHDOG_S = 4.0
HUNG_AFTER_S = 2 * CHILD_WATCHDOG_S
KILL_HUNG_AFTER_S = 5 * CHILD_WATCHDOG_S
#: Restart backoff: first delay, cap, and the uptime after which it starts over.
BACKOFF_FIRST_S, BACKOFF_MAX_S, BACKOFF_RESET_AFTER_S = 0.5, 30.0, 60.0
STATUS_EVERY_S = 5.0
ROLES_FILE = "roles.json"

_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class RoleProcess:
    name: str  # "ingest", "project", "serve.1", …
    role: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    status: str = ""
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    last_exit: str | None = None
    #: set while stopping: this end was asked for
    stopping: bool = False
    _socket: socket.socket | None = None
    address: str = ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def plan(roles: Sequence[str], api_workers: int) -> list[RoleProcess]:
    """The processes for `roles`, in start order (project, ingest, serve workers)."""
    processes: list[RoleProcess] = []
    for role in ("project", "ingest", "serve"):
        if role not in roles:
            continue
        if role == "serve" and api_workers > 1:
            processes += [RoleProcess(f"serve.{i}", "serve") for i in range(1, api_workers + 1)]
        else:
            processes.append(RoleProcess(role, role))
    return processes


def _child_setup() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RoleSupervisor:
    def __init__(
        self,
        processes: list[RoleProcess],
        *,
        command: Sequence[str] = ("run",),
        environ: dict[str, str],
        notifier: Notifier,
        state_dir: Path,
        metrics: RoleMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.processes = processes
        self._command = list(command)
        self._environ = environ
        self._notifier = notifier
        self._state_dir = state_dir
        self._metrics = metrics or RoleMetrics()
        self._clock = clock
        self._stopping = False
        self._fatal: RoleProcess | None = None
        self._changed = asyncio.Event()
        self._announced_ready = False
        self._tag = f"recorder-{os.getpid()}-{id(self):x}"
        for process in processes:
            self._metrics.watch(process.role)

    # -- the task ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        loop = asyncio.get_running_loop()
        try:
            for process in self.processes:
                self._open_socket(process, loop)
                await self._spawn(process)
            watchers = [asyncio.create_task(self._watch(p, stop), name=f"role {p.name}")
                        for p in self.processes]
            health = asyncio.create_task(self._health(stop), name="role-health")
            fatal = asyncio.create_task(self._wait_fatal(), name="role-fatal")
            stopper = asyncio.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait({stopper, fatal}, return_when=asyncio.FIRST_COMPLETED)
            self._stopping = True
            self._notifier.stopping("stopping: draining serve, then ingest, then project")
            stopper.cancel()
            fatal.cancel()
            code = await self._drain()
            health.cancel()
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(health, *watchers, return_exceptions=True)
            if self._fatal is not None:
                return 2
            return code
        finally:
            for process in self.processes:
                if process.running and process.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        process.process.kill()
                if process._socket is not None:
                    loop.remove_reader(process._socket.fileno())
                    process._socket.close()
            self._write_roles_file()

    def hurry(self) -> None:
        """A second SIGTERM: pass it on, so every child stops at once."""
        for process in self.processes:
            if process.running and process.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.process.send_signal(signal.SIGTERM)

    # -- children ------------------------------------------------------------------------------

    async def _spawn(self, process: RoleProcess) -> None:
        env = dict(self._environ)
        env.update({
            "RECORDER_RUN_ROLE": process.role,
            ROLE_PROCESS_ENV: process.name,
            "NOTIFY_SOCKET": process.address,
            "WATCHDOG_USEC": str(int(CHILD_WATCHDOG_S * 1e6)),
        })
        env.pop("WATCHDOG_PID", None)
        process.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", *self._command, env=env,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=_child_setup,
        )
        now = self._clock()
        process.started_at, process.last_ping = now, now
        process.ready, process.status, process.stopping = False, "starting", False
        log.info("role %s started (pid %d)", process.name, process.process.pid,
                 extra=event("roles.process.started"))
        self._write_roles_file()

    async def _watch(self, process: RoleProcess, stop: asyncio.Event) -> None:
        """Wait for the child to end; restart it with backoff unless we are stopping."""
        while True:
            assert process.process is not None
            code = await process.process.wait()
            process_ended(process.process.pid)
            self._metrics.up.labels(role=process.role).set(0)
            process.ready = False
            process.last_exit = _describe_exit(code)
            self._changed.set()
            if self._stopping or process.stopping:
                self._write_roles_file()
                return
            if code == 2:
                log.error("role %s exited with code 2 (a setting a restart cannot fix); "
                          "stopping", process.name, extra=event("roles.process.fatal"))
                self._fatal = process
                self._changed.set()
                return
            ran_s = self._clock() - process.started_at
            if ran_s >= BACKOFF_RESET_AFTER_S:
                process.backoff_s = BACKOFF_FIRST_S
            delay = process.backoff_s
            process.backoff_s = min(BACKOFF_MAX_S, process.backoff_s * 2)
            process.restarts += 1
            self._metrics.restarts.labels(role=process.role).inc()
            process.status = f"restarting in {delay:.1f}s after it {process.last_exit}"
            log.error("role %s (pid %d) %s after %.1fs; restarting in %.1fs (restart %d)",
                      process.name, process.process.pid, process.last_exit, ran_s, delay,
                      process.restarts, extra=event("roles.process.exited"))
            self._write_roles_file()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set() or self._stopping:
                return
            await self._spawn(process)

    async def _wait_fatal(self) -> None:
        while self._fatal is None:
            await self._changed.wait()
            self._changed.clear()

    # -- health --------------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the roles are not healthy, or None."""
        now = self._clock()
        for process in self.processes:
            if process.running and now - process.last_ping > HUNG_AFTER_S:
                return f"role {process.name} has been silent for {now - process.last_ping:.0f}s"
        return None

    def summary(self) -> str:
        parts = []
        for process in self.processes:
            if process.running:
                state = process.status
            elif process.process is None:
                state = "not started"
            else:
                state = f"down: it {process.last_exit}"
            restarts = f" ({process.restarts} restarts)" if process.restarts else ""
            parts.append(f"{process.name}: {state}{restarts}")
        return "; ".join(parts)

    async def _health(self, stop: asyncio.Event) -> None:
        interval = self._notifier.watchdog_interval_s
        tick = min(interval, 1.0) if interval else 1.0
        next_status = 0.0
        while not stop.is_set():
            now = self._clock()
            if not self._announced_ready and all(p.ready for p in self.processes):
                self._announced_ready = True
                self._notifier.ready(self.summary())
                log.info("ready: every role is up (%s)",
                         ", ".join(f"{p.name} pid {p.process.pid}" for p in self.processes
                                   if p.process is not None),
                         extra=event("service.ready"))
            problem = self.problem()
            if problem is None and interval is not None and self._announced_ready:
                self._notifier.watchdog()
            for process in self.processes:
                silent = now - process.last_ping
                if process.running and silent > KILL_HUNG_AFTER_S and process.process:
                    log.error("role %s silent for %.0fs: killing it (SIGABRT) to restart it",
                              process.name, silent, extra=event("roles.process.hung"))
                    process.last_ping = now  # once per deadline
                    with contextlib.suppress(ProcessLookupError):
                        process.process.send_signal(signal.SIGABRT)
            if now >= next_status:
                self._notifier.status(self.summary() if problem is None
                                      else f"unhealthy: {problem}")
                self._write_roles_file()
                next_status = now + STATUS_EVERY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    # -- notify sockets ------------------------------------------------------------------------

    def _open_socket(self, process: RoleProcess, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        name = f"{self._tag}-{process.name}"
        sock.bind("\0" + name)  # abstract namespace: no path length limit, nothing to clean
        sock.setblocking(False)
        process._socket, process.address = sock, "@" + name
        loop.add_reader(sock.fileno(), self._receive, process)

    def _receive(self, process: RoleProcess) -> None:
        assert process._socket is not None
        while True:
            try:
                data = process._socket.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            self._apply(process, data.decode("utf-8", "replace"))

    def _apply(self, process: RoleProcess, message: str) -> None:
        for line in message.splitlines():
            key, _, value = line.partition("=")
            if key == "WATCHDOG" and value == "1":
                process.last_ping = self._clock()
            elif key == "READY" and value == "1":
                process.ready, process.last_ping = True, self._clock()
                self._metrics.up.labels(role=process.role).set(1)
                log.info("role %s ready", process.name, extra=event("roles.process.ready"))
                self._write_roles_file()
            elif key == "STATUS":
                process.status = value

    # -- the roles file ------------------------------------------------------------------------

    def _write_roles_file(self) -> None:
        """state_dir/roles.json: what `recorder status` shows about the role processes."""
        record = {
            "supervisor_pid": os.getpid(),
            "updated_at": time.time(),
            "roles": [
                {"name": p.name, "role": p.role,
                 "pid": p.process.pid if p.process is not None else None,
                 "running": p.running, "ready": p.ready, "status": p.status,
                 "restarts": p.restarts, "last_exit": p.last_exit}
                for p in self.processes
            ],
        }
        path = self._state_dir / ROLES_FILE
        with contextlib.suppress(OSError):
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
            temporary.replace(path)

    # -- stop ----------------------------------------------------------------------------------

    async def _drain(self) -> int:
        code = 0
        for role in DRAIN_ORDER:
            group = [p for p in self.processes if p.role == role and p.running]
            for process in group:
                process.stopping = True
                assert process.process is not None
                with contextlib.suppress(ProcessLookupError):
                    process.process.send_signal(signal.SIGTERM)
            for process in group:
                assert process.process is not None
                try:
                    returncode = await asyncio.wait_for(process.process.wait(),
                                                        DRAIN_BUDGET_S[role])
                except TimeoutError:
                    log.error("role %s did not stop within %.0fs; killed", process.name,
                              DRAIN_BUDGET_S[role], extra=event("roles.process.timeout"))
                    with contextlib.suppress(ProcessLookupError):
                        process.process.kill()
                    returncode = await process.process.wait()
                process.last_exit = _describe_exit(returncode)
                if returncode != 0:
                    code = 1
                log.log(logging.INFO if returncode == 0 else logging.WARNING,
                        "role %s stopped (it %s)", process.name, process.last_exit,
                        extra=event("roles.process.stopped"))
        return code


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def read_roles_file(state_dir: Path) -> dict[str, object] | None:
    """The supervisor's last word on its roles, if a supervisor runs (or ran) here."""
    try:
        record = orjson.loads((state_dir / ROLES_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None
