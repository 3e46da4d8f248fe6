"""Shared by bench/ingest.py and bench/api.py: roles in child processes, CPU from /proc.

Not a bench itself. `recorder run` runs each role (ingest, project, serve) in a process of
its own; the benches do the same with multiprocessing's "spawn" context, each child calling
`recorder.app.build_app(settings, target, roles=[role])` (or, for api.py's ingest, an
EventWriter fed open loop) and answering commands from the bench over a Pipe:

- parent side, `ChildProcess`: start it, wait for its first answer ("ready"), `call` a
  command and wait for the answer, `stop` it (its last answer comes after its app stopped);
- child side, `serve_commands`: a loop on the child's event loop, one command at a time.

Every message is `(ok, value)`; a command that raised answers `(False, "Type: message")`,
which the parent raises as a CorrectnessError. A child that dies is noticed at the next
receive (the pipe reads EOF) and reported with its exit code. Both ends read the pipe in a
thread of the event loop's executor, never with add_reader, which would make the pipe's fd
non-blocking under uvloop and break large messages.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
from append import CorrectnessError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- CPU and memory from /proc -------------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid: int | str, *, reaped: bool = False) -> int:
    """utime + stime; with `reaped`, plus that of children which ended and were waited for."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks + int(fields[13]) + int(fields[14]) if reaped else ticks


def parent_pid(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on right now (all bound at once, then freed)."""
    import socket

    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


async def postmaster_pid(dsn: str) -> int | None:
    """The server's postmaster, if it runs on this machine (a backend's parent)."""
    connection = await asyncpg.connect(dsn)
    try:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        return parent_pid(backend)  # while the backend still runs
    except OSError:
        return None  # a remote server: its CPU is not ours to see
    finally:
        await connection.close()


async def log_head(dsn: str) -> int:
    """The log's head, read on a connection of its own."""
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT position FROM log_head WHERE id = 1"))
    finally:
        await connection.close()


def postgres_cpu_s(postmaster: int | None) -> float:
    """CPU seconds of the server under test: its postmaster, its running children, and the
    children that ended (the postmaster reaps its backends, so their time is in its cutime).
    Other servers on the machine, such as another bench's, are left out."""
    if postmaster is None:
        return 0.0
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(entry) == postmaster:
                ticks += cpu_ticks(entry, reaped=True)
            elif parent_pid(entry) == postmaster:
                ticks += cpu_ticks(entry)
        except OSError:
            continue  # ended between the listing and the read: counted once reaped
    return ticks / CLOCK_TICKS


def machine_busy_cpu_s() -> float:
    """CPU seconds all processes on the machine spent busy (/proc/stat, every core)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def pid_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of a running process (since it started); None if it is gone."""
    if not pid:
        return None
    try:
        return cpu_ticks(pid) / CLOCK_TICKS
    except OSError:
        return None


def process_cpu_s(pid: int | str = "self") -> float:
    try:
        return cpu_ticks(pid) / CLOCK_TICKS
    except OSError:
        return 0.0


def server_pid(connection: Any) -> int | None:
    """The server backend's pid behind an asyncpg connection, if it is open."""
    if connection is None or connection.is_closed():
        return None
    return int(connection.get_server_pid())


def backend_cpu_s(connection: Any) -> float | None:
    """CPU seconds of the server backend behind an asyncpg connection (since it connected)."""
    return pid_cpu_s(server_pid(connection))


class CpuWindow:
    """CPU seconds of named processes over one window: `start()`, then `used()`.

    `pids` maps a name to a pid (None: this process), `postmaster` adds "postgres" (the whole
    server under test). "other_processes" is what the machine spent busy beyond those (other
    sessions' work: noise here)."""

    def __init__(self, pids: Mapping[str, int | None], postmaster: int | None) -> None:
        self.pids = dict(pids)
        self.postmaster = postmaster
        self._start: dict[str, float | None] = {}
        self._wall = 0.0

    def _read(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {
            name: process_cpu_s() if pid is None else pid_cpu_s(pid)
            for name, pid in self.pids.items()
        }
        values["postgres"] = postgres_cpu_s(self.postmaster)
        values["machine"] = machine_busy_cpu_s()
        return values

    def start(self) -> None:
        self._start = self._read()
        self._wall = time.perf_counter()

    def used(self) -> tuple[dict[str, float | None], float]:
        """({name: CPU seconds}, window seconds). A process gone before the end reads None."""
        end = self._read()
        used: dict[str, float | None] = {}
        for name, value in end.items():
            first = self._start.get(name)
            used[name] = None if value is None or first is None else max(0.0, value - first)
        counted = sum(v or 0.0 for k, v in used.items()
                      if k in self.pids or k == "postgres")
        used["other_processes"] = max(0.0, (used.pop("machine") or 0.0) - counted)
        return used, time.perf_counter() - self._wall


class BackendCpu:
    """CPU seconds of named server backends over a window, by pid (`start`, then `used`). A
    backend that connected during the window (no pid at the start, or another one) counts its
    whole life; one gone by the end reads None. Their time is in "postgres" too."""

    def __init__(self) -> None:
        self._start: dict[str, tuple[int | None, float | None]] = {}

    def start(self, pids: Mapping[str, int | None]) -> None:
        self._start = {name: (pid, pid_cpu_s(pid)) for name, pid in pids.items()}

    def used(self, pids: Mapping[str, int | None]) -> dict[str, float | None]:
        used: dict[str, float | None] = {}
        for name, pid in pids.items():
            now = pid_cpu_s(pid)
            first_pid, first = self._start.get(name, (None, None))
            if now is None:
                used[name] = None
            elif first_pid == pid and first is not None:
                used[name] = max(0.0, now - first)
            else:
                used[name] = now
        return used


def per_event_us(cpu: Mapping[str, float | None], events: int) -> dict[str, float | None]:
    return {k: None if v is None else round(v / max(1, events) * 1e6, 1) for k, v in cpu.items()}


def rounded(values: Mapping[str, float | None], digits: int = 2) -> dict[str, float | None]:
    return {k: None if v is None else round(v, digits) for k, v in values.items()}


class GcPauses:
    """Time the cyclic garbage collector stops this process's event loop, per generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self) -> GcPauses:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def summary(self) -> dict[str, Any]:
        total = sum(p for _, p in self.pauses)
        full = [p for g, p in self.pauses if g == 2]
        return {
            "collections": len(self.pauses),
            "gen2_collections": len(full),
            "total_ms": round(total * 1000, 1),
            "max_ms": round(max((p for _, p in self.pauses), default=0.0) * 1000, 2),
            "max_gen2_ms": round(max(full, default=0.0) * 1000, 2),
        }


class LoopLag:
    """How late a 5 ms sleep wakes on this process's event loop: what any task on it (a
    request, the writer's next round trip) waits for the other tasks on the one loop, and for
    the process to be scheduled at all on a busy machine."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(time.perf_counter() - started - 0.005)

    def summary(self) -> dict[str, float | None]:
        samples = sorted(self.samples)

        def at(fraction: float) -> float | None:
            if not samples:
                return None
            index = min(len(samples) - 1, max(0, round(fraction * len(samples)) - 1))
            return round(samples[index] * 1000, 2)

        return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


# -- projection lag, per event -------------------------------------------------------------------


def projection_lags(
    positions: Sequence[int], committed: Sequence[float], projected: Sequence[tuple[int, float]],
) -> list[float | None]:
    """Per stored event (its position and the monotonic time its commit was heard), seconds
    until the projector's saved position first reached it; None if it never did. `projected`
    is (position, monotonic time) per change of the saved position, in order; time.monotonic
    is CLOCK_MONOTONIC, one clock for every process of the machine."""
    order = sorted(range(len(positions)), key=positions.__getitem__)
    lags: list[float | None] = [None] * len(positions)
    j = 0
    for i in order:
        position = positions[i]
        while j < len(projected) and projected[j][0] < position:
            j += 1
        if j == len(projected):
            break
        lags[i] = max(0.0, projected[j][1] - committed[i])
    return lags


# -- children ------------------------------------------------------------------------------------


class ChildProcess:
    """A spawned child answering commands over a pipe (see `serve_commands`)."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        """`target(pipe, *args)` runs in the child; its first message says it is ready."""
        context = multiprocessing.get_context("spawn")
        self.name = name
        self._pipe, self._child_end = context.Pipe()
        self._process = context.Process(target=target, args=(self._child_end, *args),
                                        name=name, daemon=True)
        self._lock = asyncio.Lock()
        self.pid = 0
        self.info: Any = None

    async def start(self, timeout_s: float = 120.0) -> Any:
        """Start it and wait for its first message (what it says once ready)."""
        self._process.start()
        self._child_end.close()
        self.pid = self._process.pid or 0
        self.info = await self._receive(timeout_s)
        return self.info

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    async def _receive(self, timeout_s: float) -> Any:
        # In a thread: a pipe's fd must stay blocking (an event loop's add_reader would make
        # it non-blocking, and a large message would then fail half-read).
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._pipe.poll, timeout_s):
            raise CorrectnessError(
                f"the {self.name} process did not answer within {timeout_s:.0f}s"
            )
        try:
            ok, value = await loop.run_in_executor(None, self._pipe.recv)
        except EOFError:
            self._process.join(5)
            raise CorrectnessError(
                f"the {self.name} process ended (exit code {self._process.exitcode})"
            ) from None
        if not ok:
            raise CorrectnessError(f"the {self.name} process: {value}")
        return value

    async def call(self, command: str, *args: Any, timeout_s: float = 120.0) -> Any:
        async with self._lock:
            self._pipe.send((command, args))
            return await self._receive(timeout_s)

    async def stop(self, timeout_s: float = 120.0) -> Any:
        """Ask it to stop; its last answer (sent once its app stopped), or None."""
        final = None
        if not self.pid:
            return None  # never started
        try:
            if self._process.is_alive():
                async with self._lock:
                    self._pipe.send(("stop", ()))
                    final = await self._receive(timeout_s)
        finally:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._process.join, 30)
            if self._process.is_alive():
                self._process.kill()
            self._pipe.close()
        return final


Handler = Callable[..., Any]


async def serve_commands(pipe: Connection, handlers: Mapping[str, Handler]) -> None:
    """Answer `(command, args)` messages with `handlers[command](*args)` (awaited if it is a
    coroutine) until "stop" or until the parent went away. Runs on the child's event loop,
    next to its app; the pipe is read in a thread, one command at a time."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            command, args = await loop.run_in_executor(None, pipe.recv)
        except (EOFError, OSError):
            return  # the bench went away
        if command == "stop":
            return
        try:
            result = handlers[command](*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            pipe.send((False, f"{command}: {type(exc).__name__}: {exc}"))
        else:
            pipe.send((True, result))
