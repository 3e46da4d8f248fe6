"""`recorder simulate`: run the simulator on a real port until SIGINT/SIGTERM.

Prints what a client needs (websocket base, CSDS/IdP base, one consumer token and a one-line
connection example) to stdout; logs go to stderr like every other command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from recorder.errors import ConfigError
from recorder.simulator.core import Simulator
from recorder.simulator.faults import VARIANT_KINDS, Faults
from recorder.simulator.model import SimulatorError

DEFAULT_LISTEN = "127.0.0.1:8790"
DEFAULT_ACCOUNT = "71234567"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                        help=f"address to serve on; port 0 picks a free one [{DEFAULT_LISTEN}]")
    parser.add_argument("--account", metavar="ACCOUNT",
                        help=f"account id [RECORDER_ACCOUNT, else {DEFAULT_ACCOUNT}]")
    parser.add_argument("--seed", type=int, default=0, help="seed of every generator [0]")
    parser.add_argument("--token-ttl", type=float, default=86400.0, metavar="SECONDS",
                        help="lifetime of the printed consumer token [86400]")
    parser.add_argument("--no-auto-reply", action="store_true",
                        help="scripted agents do not answer what clients publish")
    parser.add_argument("--no-survey", action="store_true",
                        help="closing a conversation opens no POST_SURVEY dialog")
    parser.add_argument("--csds-list-shape", action="store_true",
                        help='answer CSDS with {"baseURIs": [...]}')
    parser.add_argument("--gap-probability", type=float, default=0.05, metavar="P",
                        help="chance of a sequence gap before a stored event [0.05]")
    traffic = parser.add_argument_group("traffic")
    traffic.add_argument("--traffic-consumers", type=int, default=0, metavar="N",
                         help="consumers to generate traffic for (the first one's token is "
                              "printed) [0: no traffic]")
    traffic.add_argument("--traffic-conversations", type=int, default=3, metavar="M",
                         help="conversations per consumer with --traffic-events; endless "
                              "traffic keeps opening new ones [3]")
    traffic.add_argument("--traffic-rate", type=float, default=5.0, metavar="R",
                         help="model events per second [5]")
    traffic.add_argument("--traffic-events", type=int, metavar="N",
                         help="stop the traffic after N events [run until stopped]")
    faults = parser.add_argument_group("faults")
    faults.add_argument("--drop-after-frames", type=int, metavar="N",
                        help="drop each socket abruptly after N frames")
    faults.add_argument("--drop-probability", type=float, default=0.0, metavar="P",
                        help="drop the socket abruptly instead of sending a frame")
    faults.add_argument("--close-after-frames", type=int, metavar="N",
                        help="close each socket after N frames with --close-code")
    faults.add_argument("--close-code", type=int, metavar="CODE",
                        help="close code for --close-after-frames [1011]")
    faults.add_argument("--reject-every", type=int, metavar="K",
                        help="answer every K-th request 429")
    faults.add_argument("--server-error-every", type=int, metavar="K",
                        help="answer every K-th request 503")
    faults.add_argument("--duplicate-probability", type=float, default=0.0, metavar="P",
                        help="send a notification twice")
    faults.add_argument("--reorder-upserts", action="store_true",
                        help="deliver an older UPSERT after the newer one")
    faults.add_argument("--shape-variants", action="store_true",
                        help="use documented alternative frame shapes")
    faults.add_argument("--variant-probability", type=float, default=0.5, metavar="P",
                        help="chance of each variant per frame [0.5]")
    faults.add_argument("--variants", metavar="KIND,...",
                        help=f"only these variant kinds: {', '.join(VARIANT_KINDS)}")
    faults.add_argument("--unknown-event-probability", type=float, default=0.0, metavar="P",
                        help="also store an event of an unknown type")
    faults.add_argument("--malformed-probability", type=float, default=0.0, metavar="P",
                        help="send a malformed frame before a frame")
    faults.add_argument("--response-delay-ms", type=float, default=0.0, metavar="MS",
                        help="answer every request this much later")
    faults.add_argument("--no-clock", action="store_true", help="never answer GetClock")
    faults.add_argument("--withhold-probability", type=float, default=0.0, metavar="P",
                        help="never deliver a stored event on the socket (only the history "
                             "shows it)")
    faults.add_argument("--withhold-tail-probability", type=float, default=0.0, metavar="P",
                        help="withhold an event and every later one of its dialog")
    faults.add_argument("--rest-reject-every", type=int, metavar="K",
                        help="answer every K-th profile/history request 429")
    faults.add_argument("--rest-server-error-every", type=int, metavar="K",
                        help="answer every K-th profile/history request 503")
    faults.add_argument("--history-partial-probability", type=float, default=0.0, metavar="P",
                        help="drop records from a history page, keeping the true count")
    faults.add_argument("--unknown-agent", action="append", metavar="ID",
                        help="answer this agent's public profile 404 (repeatable)")


def faults_from_args(args: argparse.Namespace) -> Faults:
    variants = None
    if args.variants:
        variants = frozenset(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = variants - set(VARIANT_KINDS)
        if unknown:
            raise ConfigError("--variants", f"unknown kinds {', '.join(sorted(unknown))}")
    return Faults(
        drop_after_frames=args.drop_after_frames,
        drop_probability=args.drop_probability,
        close_after_frames=args.close_after_frames,
        close_code=args.close_code,
        reject_every=args.reject_every,
        server_error_every=args.server_error_every,
        duplicate_probability=args.duplicate_probability,
        reorder_upserts=args.reorder_upserts,
        shape_variants=args.shape_variants or variants is not None,
        variant_probability=args.variant_probability,
        variants=variants,
        unknown_event_probability=args.unknown_event_probability,
        malformed_probability=args.malformed_probability,
        response_delay_ms=args.response_delay_ms,
        no_clock=args.no_clock,
        withhold_probability=args.withhold_probability,
        withhold_tail_probability=args.withhold_tail_probability,
        rest_reject_every=args.rest_reject_every,
        rest_server_error_every=args.rest_server_error_every,
        history_partial_probability=args.history_partial_probability,
        unknown_agents=set(args.unknown_agent or ()),
    )


def split_listen(value: str) -> tuple[str, int]:
    """HOST:PORT where, unlike the daemon's listen settings, port 0 (any free port) is fine."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("--listen", f"must be host:port, got {value!r}")
    return host, int(port_text)


async def run_simulator(args: argparse.Namespace, default_account: str | None = None) -> int:
    host, port = split_listen(args.listen)
    sim = Simulator(
        account=args.account or default_account or DEFAULT_ACCOUNT,
        seed=args.seed,
        faults=faults_from_args(args),
        gap_probability=args.gap_probability,
        auto_reply=not args.no_auto_reply,
        survey_enabled=not args.no_survey,
        csds_list_shape=args.csds_list_shape,
        keep_journal=False,
    )
    try:
        await sim.start(host, port)
    except OSError as exc:
        raise SimulatorError(f"cannot listen on {args.listen}: {exc}") from exc
    try:
        if args.traffic_consumers > 0:
            sim.start_traffic(
                args.traffic_consumers, args.traffic_conversations, args.traffic_rate,
                total_events=args.traffic_events,
            )
            consumer = sim.traffic_consumers[0]
        else:
            consumer = sim.new_consumer()
        token = sim.issue_token(consumer, ttl_s=args.token_ttl)
        _print_banner(sim, consumer, token)
        await _wait_for_signal()
    finally:
        await sim.stop()
    return 0


def _print_banner(sim: Simulator, consumer: str, token: str) -> None:
    lines = [
        f"ws_url:    {sim.ws_url}",
        f"endpoint:  {sim.ws_endpoint()}",
        f"csds_url:  {sim.http_url}   (CSDS, IdP signup, agent profile and history base)",
        f"account:   {sim.account}",
        f"consumer:  {consumer}",
        f"token:     {token}",
        f"example:   wscat -c '{sim.ws_endpoint()}' -H 'Authorization: jwt {token}'",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
