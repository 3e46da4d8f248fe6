"""`recorder demo`: the whole daemon against an in-process simulator with live traffic.

Uses the configured database (the embedded PostgreSQL by default), migrates it, and prints
where to look while conversations are being recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import shlex
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from recorder.config import ConsumerIdentity, Secret, Settings
from recorder.daemon import stop_on_signals, tune_garbage_collector
from recorder.db import migrate
from recorder.db.target import DatabaseTarget, mask_url, open_database
from recorder.errors import ConfigError
from recorder.projection.sql import DEMO_PROGRESS
from recorder.simulator import Simulator

if TYPE_CHECKING:
    from recorder.app import App

DEMO_ACCOUNT = "71234567"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consumers", type=int, default=3, help="simulated consumers [3]")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="simulated events per second [20]")
    parser.add_argument("--seed", type=int, default=None,
                        help="traffic seed; the same seed repeats the same conversation ids, "
                             "so use it with a fresh --state-dir [a new one each run]")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long [run until Ctrl-C]")
    parser.add_argument("--every", type=float, default=5.0, metavar="SECONDS",
                        help="print progress this often [5]")


def command_as_invoked(argv0: str | None = None) -> str:
    """How to run recorder again from this shell: `recorder` when PATH finds this one, else
    the path it was started by (`.venv/bin/recorder` without an activated venv), or
    `python -m recorder`."""
    started = Path(sys.argv[0] if argv0 is None else argv0)
    if started.name == "__main__.py":
        return f"{shlex.quote(_shortest(Path(sys.executable)))} -m recorder"
    on_path = shutil.which("recorder")
    if on_path is not None and Path(on_path).resolve() == started.resolve():
        return "recorder"
    return shlex.quote(_shortest(started))


def _shortest(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


async def _progress(target: DatabaseTarget, every: float, stop: asyncio.Event) -> None:
    connection = await asyncpg.connect(target.dsn)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            row = await connection.fetchrow(DEMO_PROGRESS)
            print(
                f"recorded {row['events']} events: {row['conversations']} conversations "
                f"({row['open']} open), {row['messages']} messages, {row['receipts']} receipts, "
                f"{row['quarantined']} quarantined",
                flush=True,
            )
    finally:
        await connection.close()


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    # A fresh seed per run: a repeated one repeats conversation and dialog ids, and a second
    # run on the same database would then merge into the first run's conversations.
    seed = secrets.randbelow(1_000_000) if args.seed is None else args.seed
    async with Simulator(account=DEMO_ACCOUNT, seed=seed) as sim:
        consumers = [sim.new_consumer() for _ in range(args.consumers)]
        demo_settings = dataclasses.replace(
            settings,
            account=DEMO_ACCOUNT,
            csds_url=sim.http_url,  # the simulator answers the domain lookup too
            ums_url=None,
            # A demo shows conversations reconciled with the history within seconds.
            reconcile_after_s=min(settings.reconcile_after_s, 10.0),
            consumer_jwt=None,
            consumer_jwt_file=None,
            consumers=tuple(
                ConsumerIdentity(name=f"demo-{n}", jwt=Secret(sim.token_for(consumer)))
                for n, consumer in enumerate(consumers, 1)
            ),
        )
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with open_database(demo_settings) as target, \
                    contextlib.AsyncExitStack() as stack:
                await migrate.upgrade(target)
                app = await stack.enter_async_context(_build_app(demo_settings, target))
                _print_where_to_look(sim, target, demo_settings, len(consumers), seed)
                traffic = sim.start_traffic(consumers, conversations_per_consumer=3,
                                            rate=args.rate)
                stack.push_async_callback(_cancel, traffic)
                tune_garbage_collector()
                reporter = asyncio.create_task(_progress(target, args.every, stop))
                if args.duration is not None:
                    asyncio.get_running_loop().call_later(args.duration, stop.set)
                code = await app.run(stop)
                await reporter
    head = app.writer.head if app.writer is not None else 0
    print(f"demo stopped: {head} events recorded", file=sys.stderr)
    return code


@contextlib.asynccontextmanager
async def _build_app(settings: Settings, target: DatabaseTarget) -> AsyncIterator[App]:
    """The daemon's components; a taken API port says how to run a second demo beside."""
    from recorder.app import build_app  # late: `recorder --help` need not load the daemon

    entered = False
    try:
        async with build_app(settings, target) as app:
            entered = True
            yield app
    except ConfigError as exc:
        if entered or exc.setting != "RECORDER_API_LISTEN":
            raise
        raise ConfigError(exc.setting, f"{exc.problem}; if another demo runs, give this one "
                          "its own state directory too (--state-dir ./var2)") from exc


async def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _print_where_to_look(
    sim: Simulator, target: DatabaseTarget, settings: Settings, consumers: int, seed: int
) -> None:
    host, port = settings.api_host_port
    recorder = command_as_invoked()
    print(f"simulated LivePerson on {sim.ws_url} with {consumers} consumers (seed {seed})")
    print(f"recording into {target.describe()}")
    print(f"look:  psql '{mask_url(target.dsn)}' -c 'SELECT * FROM conversations'")
    print(f"       curl -s http://{host}:{port}/conversations   (the read API)")
    print(f"       {recorder} status   (in another terminal; Ctrl-C stops the demo)", flush=True)
