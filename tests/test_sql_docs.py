"""docs/sql.md: it documents every column, key and index of what analysts may read, and each
of its example queries gives, on a database the daemon recorded from the simulator, exactly
what the simulator knows it sent.

One database is filled per module: the daemon runs in process against the simulator while
tests/analyst_scenario.py scripts three days of conversations in virtual time (answered and
unanswered, transfers, receipts, closes by agent, consumer and system, CSAT, post-conversation
surveys, TTRs, and a few left open). The queries run as a `recorder grant-reader` role, with
psql's `:'name'` variables bound as parameters. Expected results are computed from the
simulator's model (tests/analyst_scenario.Truth), never from the projection tables.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import decimal
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from recorder.db import migrate
from recorder.db.grants import READABLE, grant_reader
from recorder.db.target import DatabaseTarget
from recorder.simulator import Simulator
from tests.analyst_scenario import (
    CONSUMERS,
    DAY_MS,
    ConversationTruth,
    MessageTruth,
    Truth,
    first_day_ms,
    install_clock,
    play,
    utc,
)
from tests.faults import oracle
from tests.faults.harness import (
    ACCOUNT,
    log_head,
    poll,
    running_daemon,
    settings_for,
    static_identities,
)
from tests.helpers import admin, assert_log_contiguous, with_database

DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
SEED = 20261125
VIEWS = ("v_messages", "v_conversation_facts", "v_daily")
#: Spellings of types in the document that PostgreSQL's format_type writes out in full.
TYPE_NAMES = {"timestamptz": "timestamp with time zone"}

# -- the document ---------------------------------------------------------------------------------

QUERY = re.compile(
    r"<!--\s*query:\s*(?P<name>[^\s>]+)\s*-->\s*```sql[^\n]*\n(?P<sql>.*?)^\s*```",
    re.DOTALL | re.MULTILINE,
)
# A string literal, a -- comment, or a psql variable (:name, :'name', :"name"; not a ::cast).
TOKEN = re.compile(
    r"(?P<string>'(?:[^']|'')*')"
    r"|(?P<comment>--[^\n]*)"
    r"|(?<![:\w]):(?P<quote>['\"]?)(?P<var>[A-Za-z_]\w*)(?P=quote)"
)
TICKED = re.compile(r"`([A-Za-z_][\w]*)`")


@dataclasses.dataclass
class Section:
    """What docs/sql.md says about one relation."""

    columns: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, type)
    key: list[str] = dataclasses.field(default_factory=list)
    indexes: set[str] = dataclasses.field(default_factory=set)
    has_indexes_line: bool = False


def read_doc() -> str:
    return DOC.read_text(encoding="utf-8")


def sections(text: str) -> dict[str, Section]:
    """Each `## \\`relation\\`` heading's column table, **Key:** and **Indexes:** lines.

    A heading of level 2 or 3 whose first backticked word is a relation opens its section;
    the next heading of level 2 or 3 closes it. Only tables whose header starts with
    `| column |` list columns.
    """
    found: dict[str, Section] = {}
    current: Section | None = None
    in_columns = in_indexes = False
    for line in text.splitlines():
        heading = re.match(r"^(#{2,3}) (.*)", line)
        if heading:
            ticked = TICKED.match(heading[2])
            current = None
            if ticked:
                assert ticked[1] not in found, f"{ticked[1]} is documented twice"
                current = found[ticked[1]] = Section()
            in_columns = in_indexes = False
            continue
        if current is None:
            continue
        if re.match(r"^\|\s*column\s*\|", line):
            in_columns = True
        elif in_columns and line.startswith("|"):
            row = re.match(r"^\|\s*`(\w+)`\s*\|\s*([^|]+?)\s*\|", line)
            if row:
                current.columns.append((row[1], row[2]))
        else:
            in_columns = False
        if line.startswith("**Key:**"):
            current.key = TICKED.findall(line)
        # **Indexes:** names every index in backticks, up to the end of its paragraph.
        if line.startswith("**Indexes:**"):
            current.has_indexes_line = in_indexes = True
        elif not line.strip():
            in_indexes = False
        if in_indexes:
            current.indexes |= set(TICKED.findall(line))
    return found


def documented_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for match in QUERY.finditer(text):
        assert match["name"] not in queries, f"query {match['name']} is documented twice"
        queries[match["name"]] = match["sql"].strip()
    return queries


def bind(sql: str, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """psql variables → $1, $2, … (one number per name), and the arguments in that order."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match["var"] is None:
            return match[0]
        name = match["var"]
        assert name in values, f"no value for :{name}"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    bound = TOKEN.sub(replace, sql).strip().rstrip(";")
    return bound, [values[name] for name in names]


# -- (a) the document against the schema ---------------------------------------------------------

COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
WHERE c.relname = ANY($1::text[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
INFORMATION_SCHEMA_COLUMNS = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
"""
PRIMARY_KEYS = """
SELECT c.relname, array_agg(a.attname ORDER BY k.n) AS columns
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace s ON s.oid = c.relnamespace AND s.nspname = current_schema()
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary AND c.relname = ANY($1::text[])
GROUP BY c.relname
"""
INDEXES = """
SELECT tablename, indexname FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = ANY($1::text[])
"""


def doc_type(name: str) -> str:
    return TYPE_NAMES.get(name, name)


async def test_the_document_names_every_column_key_and_index(db: asyncpg.Connection) -> None:
    documented = sections(read_doc())
    assert set(documented) == set(READABLE), (
        f"documented relations {sorted(documented)} differ from grants.READABLE "
        f"{sorted(READABLE)}"
    )
    in_database: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for row in await db.fetch(COLUMNS, list(READABLE)):
        in_database[row["relname"]].append((row["attname"], row["type"]))
    assert set(in_database) == set(READABLE), "a documented relation is missing from the schema"
    # information_schema agrees (it lists only what the current role may see: all of it here)
    listed = {(r["table_name"], r["column_name"])
              for r in await db.fetch(INFORMATION_SCHEMA_COLUMNS, list(READABLE))}
    assert listed == {(rel, col) for rel, cols in in_database.items() for col, _ in cols}

    for relation in READABLE:
        section = documented[relation]
        want = in_database[relation]
        got = [(name, doc_type(kind)) for name, kind in section.columns]
        names_got, names_want = [n for n, _ in got], [n for n, _ in want]
        assert set(names_got) == set(names_want), (
            f"{relation}: undocumented columns {sorted(set(names_want) - set(names_got))}, "
            f"documented but absent {sorted(set(names_got) - set(names_want))}"
        )
        assert names_got == names_want, f"{relation}: columns not in table order"
        assert got == want, f"{relation}: documented types differ: " + ", ".join(
            f"{g} vs {w}" for g, w in zip(got, want, strict=True) if g != w)
        assert section.key, f"{relation}: no **Key:** line"
        assert set(section.key) <= set(names_want), f"{relation}: key names unknown columns"
        assert section.has_indexes_line, f"{relation}: no **Indexes:** line"

    keys = {r["relname"]: list(r["columns"]) for r in await db.fetch(PRIMARY_KEYS, list(READABLE))}
    indexes: dict[str, set[str]] = collections.defaultdict(set)
    for row in await db.fetch(INDEXES, list(READABLE)):
        indexes[row["tablename"]].add(row["indexname"])
    for relation in READABLE:
        section = documented[relation]
        if relation in VIEWS:
            assert relation not in keys and not section.indexes, relation
            continue  # a view's key is checked for uniqueness on the filled database
        assert section.key == keys[relation], f"{relation}: key {section.key} vs {keys[relation]}"
        assert section.indexes == indexes[relation], (
            f"{relation}: undocumented indexes {sorted(indexes[relation] - section.indexes)}, "
            f"documented but absent {sorted(section.indexes - indexes[relation])}"
        )


def test_the_document_has_a_checked_example_for_each_question() -> None:
    queries = documented_queries(read_doc())
    assert len(queries) >= 8
    for name in ("first_response_percentiles_by_skill", "csat_by_close_reason",
                 "open_past_ttr", "messages_per_hour", "follow_the_log"):
        assert name in queries
    assert set(queries) == set(CHECKS), (
        f"queries without a check: {sorted(set(queries) - set(CHECKS))}; "
        f"checks without a query: {sorted(set(CHECKS) - set(queries))}"
    )


# -- (b) one database recorded from the simulator ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filled:
    dsn: str
    role: str
    truth: Truth
    start_ms: int  # midnight UTC of the first day

    @property
    def window(self) -> tuple[int, int]:
        """The time range the range queries use: the second and third days (not the first)."""
        return self.start_ms + DAY_MS, self.start_ms + 3 * DAY_MS

    def values(self) -> dict[str, Any]:
        low, high = self.window
        return {
            "from": utc(low), "to": utc(high),
            "from_day": utc(self.start_ms).date(), "to_day": utc(self.start_ms + 3 * DAY_MS).date(),
            "conversation_id": self.sample_conversation,
        }

    @property
    def sample_conversation(self) -> str:
        """A closed conversation with a survey, a transfer and the most messages."""
        candidates = [c for c in self.truth.conversations.values()
                      if c.had_survey and c.transfers and c.state == "CLOSE"]
        assert candidates, "the scenario made no surveyed, transferred conversation"
        return max(candidates, key=lambda c: (c.messages, c.conversation_id)).conversation_id


async def record_scenario(target: DatabaseTarget, role: str) -> tuple[Truth, int]:
    """Run the daemon against the simulator while the scenario plays; returns the truth."""
    start_ms = first_day_ms()
    rng = random.Random(SEED)
    async with Simulator(account=ACCOUNT, seed=SEED, auto_reply=False,
                         clock_start_ms=start_ms) as sim:
        clock = install_clock(sim, start_ms)
        consumers = [sim.new_consumer() for _ in range(CONSUMERS)]
        settings = settings_for(sim, static_identities(sim, consumers))
        db = await asyncpg.connect(target.dsn)
        try:
            async with running_daemon(settings, target) as daemon:
                # Every UPSERT must reach the log (transfers are derived from them): start
                # only once each identity has subscribed to its conversations.
                await poll(lambda: all(
                    any(c.ex_subscriptions for c in sim.server.hub.of_consumer(consumer))
                    for consumer in consumers), "every identity subscribed")
                ledger = await play(sim, clock, consumers, rng, start_ms,
                                    pause=lambda: asyncio.sleep(0))
                await oracle.wait_until_recorded(sim, consumers, db)
                head = await log_head(db)

                async def projected() -> bool:
                    position = await db.fetchval(
                        "SELECT position FROM projection_positions WHERE name = 'conversations'")
                    return bool(position == head)

                await poll(projected, "the projection caught up with the log")
                assert await daemon.stop() == 0
            await oracle.assert_recorded_everything(sim, consumers, db)
            # The projection holds the simulator's state: what follows tests the views.
            await oracle.assert_projection_matches(sim, consumers, db)
            await grant_reader(target, role)
        finally:
            await db.close()
        return Truth.of(sim, ledger), start_ms


@pytest.fixture(scope="module")
def filled(server_dsn: str, template_database: str) -> Iterator[Filled]:
    name = f"recorder_sqldocs_{uuid.uuid4().hex[:12]}"
    role = f"sqldocs_reader_{uuid.uuid4().hex[:10]}"
    dsn = with_database(server_dsn, name)
    asyncio.run(admin(server_dsn, f"CREATE DATABASE {name} TEMPLATE {template_database}"))
    try:
        target = DatabaseTarget(dsn=dsn, embedded=False)
        truth, start_ms = asyncio.run(record_scenario(target, role))
        yield Filled(dsn, role, truth, start_ms)
    finally:
        asyncio.run(_drop(server_dsn, dsn, name, role))


async def _drop(server_dsn: str, dsn: str, name: str, role: str) -> None:
    server = await asyncpg.connect(server_dsn)
    try:
        if await server.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await admin(dsn, f'DROP OWNED BY "{role}"')
        await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await server.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await server.close()


@pytest.fixture
async def reader(filled: Filled) -> AsyncIterator[asyncpg.Connection]:
    """A connection acting as the analyst role, read-only, as `recorder grant-reader` made it."""
    connection = await asyncpg.connect(filled.dsn)
    try:
        await connection.execute(f'SET ROLE "{filled.role}"')
        await connection.execute("SET default_transaction_read_only = on")
        yield connection
    finally:
        await connection.close()


async def run_documented(
    connection: asyncpg.Connection, name: str, values: dict[str, Any]
) -> list[asyncpg.Record]:
    sql, args = bind(documented_queries(read_doc())[name], values)
    return list(await connection.fetch(sql, *args))


def norm(value: Any) -> Any:
    """Comparable values: aware times as epoch ms, durations and numbers as rounded floats."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return round(value.timestamp() * 1000)
    if isinstance(value, dt.timedelta):
        return round(value.total_seconds(), 6)
    if isinstance(value, decimal.Decimal | float):
        return round(float(value), 6)
    return value


def rows(records: Iterable[asyncpg.Record], *skip: str) -> list[dict[str, Any]]:
    return [{k: norm(v) for k, v in r.items() if k not in skip} for r in records]


def expect(*dicts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: norm(v) for k, v in d.items()} for d in dicts]


def percentile_cont(values: Iterable[float], fraction: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    at = fraction * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def rounded(numerator: float, denominator: int, places: int) -> decimal.Decimal | None:
    """PostgreSQL's round(numeric, places) of numerator / denominator (half away from zero)."""
    if denominator == 0:
        return None
    exact = decimal.Decimal(numerator) / decimal.Decimal(denominator)
    return exact.quantize(decimal.Decimal(1).scaleb(-places), rounding=decimal.ROUND_HALF_UP)


def average(values: list[int]) -> decimal.Decimal | None:
    return rounded(sum(values), len(values), 2)


def grouped(
    items: Iterable[ConversationTruth], key: Callable[[ConversationTruth], Any]
) -> dict[Any, list[ConversationTruth]]:
    groups: dict[Any, list[ConversationTruth]] = collections.defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(sorted(groups.items()))


def seconds(later_ms: int | None, earlier_ms: int) -> float | None:
    return None if later_ms is None else (later_ms - earlier_ms) / 1000


# -- the expected result of each documented query -------------------------------------------------

Check = Callable[[Filled, list[asyncpg.Record]], None]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS[name] = function
        return function

    return register


@check("first_response_percentiles_by_skill")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    want = []
    for skill, group in grouped(filled.truth.started(*filled.window), lambda c: c.skill_id).items():
        answered = [c.first_response_s for c in group if c.first_response_s is not None]
        want.append({"skill_id": skill, "conversations": len(group), "answered": len(answered),
                     "p50_s": percentile_cont(answered, 0.5),
                     "p90_s": percentile_cont(answered, 0.9),
                     "max_s": max(answered, default=None)})
    assert rows(got) == expect(*want)


@check("csat_by_close_reason")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    closed = [c for c in filled.truth.started(*filled.window) if c.state == "CLOSE"]
    want = []
    for reason, group in grouped(closed, lambda c: c.close_reason).items():
        rates = [c.csat_rate for c in group if c.csat_rate is not None]
        want.append({"close_reason": reason, "closed": len(group), "csat_responses": len(rates),
                     "csat_average": average(rates),
                     "resolved": sum(1 for c in group if c.csat_resolution)})
    assert len(want) == 3, "the scenario closes by AGENT, CONSUMER and SYSTEM"
    assert rows(got) == expect(*want)


@check("open_past_ttr")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    now_ms = time.time() * 1000
    overdue = sorted(
        (c for c in filled.truth.conversations.values()
         if c.state == "OPEN" and c.effective_ttr_ms is not None and c.effective_ttr_ms < now_ms),
        key=lambda c: c.effective_ttr_ms or 0)
    want = [{"conversation_id": c.conversation_id, "consumer_id": c.consumer_id,
             "skill_id": c.skill_id, "ttr_type": c.ttr_type, "ttr_value": c.ttr_value,
             "effective_ttr": c.effective_ttr_ms} for c in overdue]
    # Open and waiting: the one that never got an answer, and the one transferred back to a
    # skill. Not: the one whose CUSTOM deadline lies ahead, nor the one an agent holds.
    kinds = {filled.truth.ledger.kinds[c.conversation_id] for c in overdue}
    assert kinds == {"open_waiting", "open_transferred"}
    assert rows(got, "overdue_by") == want
    assert all(r["overdue_by"] > dt.timedelta(0) for r in got)


@check("messages_per_hour")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    low, high = filled.window
    counts = collections.Counter(
        (utc(m.server_ms).replace(minute=0, second=0, microsecond=0, tzinfo=None), m.author_role)
        for m in filled.truth.messages.values() if low <= m.server_ms < high)
    want = [{"hour_utc": hour, "author_role": role, "messages": n}
            for (hour, role), n in sorted(counts.items())]
    assert rows(got) == expect(*want)


def daily(truth: Truth) -> list[dict[str, Any]]:
    want = []
    for day, group in grouped(truth.conversations.values(), lambda c: c.start_day).items():
        rates = [c.csat_rate for c in group if c.csat_rate is not None]
        responses = [c.first_response_s for c in group if c.first_response_s is not None]
        want.append({
            "day": day, "conversations": len(group),
            "closed": sum(1 for c in group if c.state == "CLOSE"),
            "messages": sum(c.messages for c in group),
            "median_first_response_s": percentile_cont(responses, 0.5),
            "csat_average": sum(rates) / len(rates) if rates else None,
            "csat_responses": len(rates),
            **{f"csat_{n}": rates.count(n) for n in range(1, 6)},
        })
    return expect(*want)


@check("daily_rollup")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    want = daily(filled.truth)
    assert len(want) == 3
    assert rows(got) == want


@check("ttr_compliance")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    want = []
    for (kind, value), group in grouped(filled.truth.started(*filled.window),
                                        lambda c: (c.ttr_type, c.ttr_value)).items():
        met = sum(1 for c in group if c.within_ttr is True)
        missed = sum(1 for c in group if c.within_ttr is False)
        want.append({"ttr_type": kind, "ttr_value": value, "met": met, "missed": missed,
                     "unanswered": sum(1 for c in group if c.within_ttr is None),
                     "met_pct": rounded(100 * met, met + missed, 1)})
    assert sum(w["missed"] for w in want) and sum(w["met"] for w in want), "both kinds occur"
    assert rows(got) == expect(*want)


@check("unanswered_conversations")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    unanswered = sorted(
        (c for c in filled.truth.started(*filled.window)
         if c.first_consumer_ms is not None and c.first_agent_ms is None),
        key=lambda c: c.start_ms)
    want = [{"conversation_id": c.conversation_id, "consumer_id": c.consumer_id,
             "skill_id": c.skill_id, "state": c.state, "close_reason": c.close_reason,
             "first_consumer_message_at": c.first_consumer_ms,
             "consumer_messages": c.consumer_messages} for c in unanswered]
    assert {c.state for c in unanswered} == {"OPEN", "CLOSE"}
    assert rows(got) == expect(*want)


@check("survey_and_csat_by_skill")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    want = []
    for skill, group in grouped(filled.truth.started(*filled.window), lambda c: c.skill_id).items():
        rates = [c.csat_rate for c in group if c.csat_rate is not None]
        want.append({"skill_id": skill, "closed": sum(1 for c in group if c.state == "CLOSE"),
                     "surveyed": sum(1 for c in group if c.had_survey),
                     "csat_responses": len(rates), "csat_average": average(rates),
                     "transfers": sum(c.transfers for c in group)})
    assert rows(got) == expect(*want)


@check("agent_workload")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    low, high = filled.window
    by_agent: dict[str, list[MessageTruth]] = collections.defaultdict(list)
    for m in filled.truth.messages.values():
        if m.author_role == "ASSIGNED_AGENT" and low <= m.server_ms < high:
            by_agent[m.author_id].append(m)
    want = [
        {"agent_id": agent, "conversations": len({m.conversation_id for m in sent}),
         "messages": len(sent),
         "accepted": sum(1 for m in sent if m.first_accepted_ms is not None),
         "read": sum(1 for m in sent if m.first_read_ms is not None),
         "median_read_after_s": percentile_cont(
             [(m.first_read_ms - m.server_ms) / 1000 for m in sent
              if m.first_read_ms is not None], 0.5)}
        for agent, sent in sorted(by_agent.items(), key=lambda item: (-len(item[1]), item[0]))]
    assert any(w["median_read_after_s"] is not None for w in want)
    counts = [r["messages"] for r in got]
    assert counts == sorted(counts, reverse=True)
    # Ties are ordered by agent_id in the database's collation: compare them in Python's.
    found = sorted(rows(got), key=lambda r: (-int(r["messages"]), str(r["agent_id"])))
    assert found == expect(*want)


@check("skill_transfers")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    started = {c.conversation_id for c in filled.truth.started(*filled.window)}
    counts = collections.Counter((source, target) for conv, source, target
                                 in filled.truth.ledger.skill_transfers if conv in started)
    want = [{"from_skill": source, "to_skill": target, "transfers": n}
            for (source, target), n in sorted(counts.items())]
    assert want
    assert rows(got) == expect(*want)


@check("conversation_messages")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    conversation = filled.sample_conversation
    sent = sorted((m for m in filled.truth.messages.values()
                   if m.conversation_id == conversation),
                  key=lambda m: (m.server_ms, m.dialog_id, m.sequence))
    want = [{"dialog_type": m.dialog_type, "dialog_id": m.dialog_id, "sequence": m.sequence,
             "author_role": m.author_role, "content_type": m.content_type, "text": m.text,
             "server_ts": m.server_ms,
             "accepted_after": seconds(m.first_accepted_ms, m.server_ms),
             "read_after": seconds(m.first_read_ms, m.server_ms)} for m in sent]
    assert {m.dialog_type for m in sent} == {"MAIN", "POST_SURVEY"}
    assert rows(got) == expect(*want)


@check("conversation_transcript")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    conversation = filled.sample_conversation
    dialogs = {m.dialog_id for m in filled.truth.messages.values()
               if m.conversation_id == conversation}
    want = {}
    for (dialog, sequence), change in filled.truth.events.items():
        if dialog not in dialogs:
            continue
        event = change["event"]
        want[(dialog, sequence)] = {
            "server_ts": change["serverTimestamp"], "originator_id": change["originatorId"],
            "role": change["originatorMetadata"]["role"], "event_type": event["type"],
            "content_type": event.get("contentType"), "message": event.get("message"),
            "receipt_status": event.get("status"), "acknowledges": event.get("sequenceList"),
        }
    found = {}
    for row in got:
        fields = rows([row], "position", "dialog_id", "sequence")[0]
        message = fields["message"]
        if message is not None and message.startswith("{"):
            fields["message"] = orjson.loads(message)  # a hosted file: the object as JSON
        if fields["acknowledges"] is not None:
            fields["acknowledges"] = orjson.loads(fields["acknowledges"])
        found[(row["dialog_id"], row["sequence"])] = fields
    assert found == want
    positions = [row["position"] for row in got]
    assert positions == sorted(positions)
    assert {w["event_type"] for w in want.values()} >= {"ContentEvent", "AcceptStatusEvent"}


@check("follow_the_log")
def _(filled: Filled, got: list[asyncpg.Record]) -> None:
    # The first page: positions 1, 2, …, in order (the whole log is paged in its own test).
    assert [row["position"] for row in got] == list(range(1, len(got) + 1))
    assert got


@pytest.mark.parametrize("name", sorted(CHECKS))
async def test_documented_query(name: str, filled: Filled, reader: asyncpg.Connection) -> None:
    got = await run_documented(reader, name, filled.values())
    CHECKS[name](filled, got)


async def test_following_the_log_page_by_page_gives_every_change_once_as_sent(
    filled: Filled, reader: asyncpg.Connection
) -> None:
    """The documented keyset query, paged from 0 with its last position, yields the log
    1..head, and its payloads are the simulator's changes, verbatim, each exactly once."""
    sql = documented_queries(read_doc())["follow_the_log"]
    assert sql.count("position > 0") == 1 and sql.count("LIMIT 1000") == 1
    page_sql = sql.replace("position > 0", "position > $1").replace("LIMIT 1000", "LIMIT $2")
    seen: list[asyncpg.Record] = []
    last, pages = 0, 0
    while page := await reader.fetch(page_sql.rstrip().rstrip(";"), last, 97):
        seen += page
        last = page[-1]["position"]
        pages += 1
    assert pages > 3
    assert [row["position"] for row in seen] == list(range(1, len(seen) + 1))
    head = await reader.fetchval("SELECT max(position) FROM events")
    assert len(seen) == head == await reader.fetchval("SELECT count(*) FROM events")

    sent_events = dict(filled.truth.events)
    sent_changes = collections.Counter(orjson.dumps(c, option=orjson.OPT_SORT_KEYS)
                                       for c in filled.truth.conversation_changes)
    recorded_changes: collections.Counter[bytes] = collections.Counter()
    agents_seen: set[str] = set()
    for row in seen:
        payload = orjson.loads(row["payload"])
        if row["kind"] == "messaging":
            key = (row["dialog_id"], row["sequence"])
            assert key in sent_events, f"{key} recorded twice, or never sent"
            assert payload == sent_events.pop(key)
            assert row["change_type"] == payload["event"]["type"]
        elif row["kind"] == "agent":  # a profile fetched as the agent appeared: once each
            assert row["change_type"] in ("PROFILE", "UNKNOWN")
            assert payload["agentId"] not in agents_seen
            agents_seen.add(payload["agentId"])
        else:
            assert row["kind"] == "conversation" and row["change_type"] == "UPSERT", row
            assert row["conversation_id"] == payload["result"]["convId"]
            recorded_changes[orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)] += 1
    assert not sent_events, f"{len(sent_events)} stored events never reached the log"
    assert recorded_changes == sent_changes


# -- the views against the simulator, row by row --------------------------------------------------


async def test_v_messages_is_every_content_event_with_its_receipts(
    filled: Filled, reader: asyncpg.Connection
) -> None:
    got = {(r["dialog_id"], r["sequence"]): r
           for r in await reader.fetch("SELECT * FROM v_messages")}
    want = filled.truth.messages
    assert got.keys() == want.keys()
    differ = []
    for key, m in want.items():
        expected = expect({
            "conversation_id": m.conversation_id, "dialog_id": m.dialog_id,
            "dialog_type": m.dialog_type, "sequence": m.sequence, "author_id": m.author_id,
            "author_role": m.author_role, "content_type": m.content_type, "text": m.text,
            "server_ts": m.server_ms, "first_read_at": m.first_read_ms,
            "first_accepted_at": m.first_accepted_ms})[0]
        found = rows([got[key]], "position")[0]
        if found != expected:
            differ.append((key, found, expected))
    assert not differ, f"{len(differ)} of {len(want)} rows differ: {differ[:3]}"
    read = sum(1 for m in want.values() if m.first_read_ms is not None)
    accepted = sum(1 for m in want.values() if m.first_accepted_ms is not None)
    assert 0 < read < len(want) and 0 < accepted < len(want)
    assert {m.content_type for m in want.values()} >= {"text/plain", "hosted/file", "rich-content"}


async def test_v_conversation_facts_is_each_conversation_as_the_simulator_ran_it(
    filled: Filled, reader: asyncpg.Connection
) -> None:
    got = {r["conversation_id"]: r
           for r in await reader.fetch("SELECT * FROM v_conversation_facts")}
    want = filled.truth.conversations
    assert got.keys() == want.keys()
    differ = []
    for conversation, c in want.items():
        expected = expect({
            "conversation_id": c.conversation_id, "account_id": ACCOUNT, "brand_id": ACCOUNT,
            "consumer_id": c.consumer_id, "skill_id": c.skill_id, "state": c.state,
            "stage": c.stage, "start_ts": c.start_ms, "end_ts": c.end_ms,
            "start_day": c.start_day, "close_reason": c.close_reason,
            "csat_rate": c.csat_rate, "csat_status": c.csat_status,
            "csat_resolution_confirmation": c.csat_resolution, "ttr_type": c.ttr_type,
            "ttr_value": c.ttr_value, "effective_ttr": c.effective_ttr_ms,
            "first_consumer_message_at": c.first_consumer_ms,
            "first_agent_message_at": c.first_agent_ms,
            "first_response_s": c.first_response_s, "first_response_within_ttr": c.within_ttr,
            "consumer_messages": c.consumer_messages, "agent_messages": c.agent_messages,
            "other_messages": c.other_messages, "transfers": c.transfers,
            "time_to_close_s": c.time_to_close_s, "had_survey": c.had_survey,
            "deleted": False})[0]
        found = rows([got[conversation]], "last_position")[0]
        if found != expected:
            differ.append((conversation, {k: (v, expected[k]) for k, v in found.items()
                                          if v != expected[k]}))
    assert not differ, f"{len(differ)} of {len(want)} conversations differ: {differ[:3]}"
    # The scenario exercises what the view distinguishes.
    facts = list(want.values())
    assert any(c.transfers > 1 for c in facts) and any(c.transfers == 0 for c in facts)
    assert any(c.had_survey for c in facts) and any(c.within_ttr is False for c in facts)
    # A survey after no answer: its bot's question is no first response.
    assert any(c.had_survey and c.first_agent_ms is None for c in facts)
    # Answered late, then transferred: a deadline runs again, yet the first response missed.
    assert any(c.effective_ttr_ms is not None and c.within_ttr is False for c in facts)


async def test_v_daily_rolls_up_each_start_day(filled: Filled, reader: asyncpg.Connection) -> None:
    assert rows(await reader.fetch("SELECT * FROM v_daily ORDER BY day")) == daily(filled.truth)


@pytest.mark.parametrize(("view", "key"), [
    ("v_messages", "dialog_id, sequence"),
    ("v_conversation_facts", "conversation_id"),
    ("v_daily", "day"),
])
async def test_a_view_has_one_row_per_documented_key(
    view: str, key: str, filled: Filled, reader: asyncpg.Connection
) -> None:
    assert sections(read_doc())[view].key == [k.strip() for k in key.split(",")]
    total, distinct = await reader.fetchrow(
        f"SELECT count(*), count(DISTINCT ({key})) FROM {view}")
    assert total == distinct > 0


async def test_the_recorded_log_is_contiguous(filled: Filled) -> None:
    connection = await asyncpg.connect(filled.dsn)
    try:
        assert await assert_log_contiguous(connection) > 0
    finally:
        await connection.close()


async def test_the_views_exist_after_migrate(empty_database: DatabaseTarget) -> None:
    await migrate.upgrade(empty_database)
    connection = await asyncpg.connect(empty_database.dsn)
    try:
        views = await connection.fetch(
            "SELECT table_name FROM information_schema.views "
            "WHERE table_schema = current_schema()")
    finally:
        await connection.close()
    assert {r["table_name"] for r in views} == set(VIEWS)
