"""`recorder demo`: the whole daemon against an in-process simulator with live traffic.

Uses the configured database (the embedded PostgreSQL by default), migrates it, and prints
where to look while conversations are being recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys

import asyncpg

from recorder import migrate
from recorder.config import ConsumerIdentity, Secret, Settings
from recorder.daemon import stop_on_signals, tune_garbage_collector
from recorder.database import DatabaseTarget, mask_url, open_database
from recorder.simulator import Simulator

DEMO_ACCOUNT = "71234567"

PROGRESS = """
SELECT (SELECT position FROM log_head WHERE id = 1) AS events,
       (SELECT count(*) FROM conversations) AS conversations,
       (SELECT count(*) FROM conversations WHERE state = 'OPEN') AS open,
       (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM receipts) AS receipts,
       (SELECT count(*) FROM quarantine) AS quarantined
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consumers", type=int, default=3, help="simulated consumers [3]")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="simulated events per second [20]")
    parser.add_argument("--seed", type=int, default=1, help="traffic seed [1]")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long [run until Ctrl-C]")
    parser.add_argument("--every", type=float, default=5.0, metavar="SECONDS",
                        help="print progress this often [5]")


async def _progress(target: DatabaseTarget, every: float, stop: asyncio.Event) -> None:
    connection = await asyncpg.connect(target.dsn)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            row = await connection.fetchrow(PROGRESS)
            print(
                f"recorded {row['events']} events: {row['conversations']} conversations "
                f"({row['open']} open), {row['messages']} messages, {row['receipts']} receipts, "
                f"{row['quarantined']} quarantined",
                flush=True,
            )
    finally:
        await connection.close()


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from recorder.app import build_app  # late: `recorder --help` need not load the daemon

    async with Simulator(account=DEMO_ACCOUNT, seed=args.seed) as sim:
        consumers = [sim.new_consumer() for _ in range(args.consumers)]
        traffic = sim.start_traffic(consumers, conversations_per_consumer=3, rate=args.rate)
        demo_settings = dataclasses.replace(
            settings,
            account=DEMO_ACCOUNT,
            csds_url=sim.http_url,  # the simulator answers the domain lookup too
            ums_url=None,
            consumer_jwt=None,
            consumer_jwt_file=None,
            consumers=tuple(
                ConsumerIdentity(name=f"demo-{n}", jwt=Secret(sim.token_for(consumer)))
                for n, consumer in enumerate(consumers, 1)
            ),
        )
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with open_database(demo_settings) as target:
                await migrate.upgrade(target)
                print(f"simulated LivePerson on {sim.ws_url} with {len(consumers)} consumers")
                print(f"recording into {target.describe()}")
                print(f"look:  psql '{mask_url(target.dsn)}' -c 'SELECT * FROM conversations'")
                host, port = demo_settings.api_host_port
                print(f"       curl -s http://{host}:{port}/conversations   (the read API)")
                print("       recorder status      (in another terminal; Ctrl-C stops the demo)",
                      flush=True)
                async with build_app(demo_settings, target) as app:
                    tune_garbage_collector()
                    reporter = asyncio.create_task(_progress(target, args.every, stop))
                    if args.duration is not None:
                        asyncio.get_running_loop().call_later(args.duration, stop.set)
                    code = await app.run(stop)
                    await reporter
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)
    print(f"demo stopped: {app.writer.head} events recorded", file=sys.stderr)
    return code
