"""Analyst SQL over the projection: every documented query of docs/sql.md at 1M events.

    python bench/analytics.py [--events N] [--conversations C] [--days D] [--runs R]
                              [--doc PATH] [--prepare SQL]...

1. Load: N events over C conversations (bench/append.py's seeded workload) are COPYed into
   `events` by bench/api.py's load_log (positions 1..N, log_head N). Two changes to the
   workload, made here by subclassing, so the analyst views have something to read:
   - the conversations start over --days UTC days (uniformly, at any time of day) from the
     day of append.BASE_TS_MS, instead of within its one hour: a one-day filter then selects
     about 1/D of them, as on a live account;
   - 10% of the OPEN UPSERTs carry effectiveTTR (start + ttr: waiting in queue; the others,
     -1, have an agent holding the conversation); from the second UPSERT on, 30% more of them
     close the conversation (the workload closes only after 6, which few conversations see),
     and a CLOSE one also carries endTs, a closeReason and, for about half, a csat block
     (rate 1..5, resolution confirmation).
   Messages, receipts and every other byte are the workload's own.
2. Project: bench/api.py's rebuild_log (recorder.rebuild with swap) folds 0..N into the
   projection tables, then VACUUM (ANALYZE) and CHECKPOINT: the steady state autovacuum
   keeps on a live database (visibility map set, hint bits written, statistics current).
3. The day and the conversation: the UTC day holding the most conversations (reported with
   its count and share), and that day's conversation with the most messages.
4. Queries: each `<!-- query: NAME -->` followed by a ```sql block in docs/sql.md, parsed at
   run time. Placeholders (psql variables, `:'name'` or `:name`) are filled from the data:
   `from`/`to` bound the chosen day (a half-open timestamptz range), `from_day`/`to_day` are
   that day and the next, `day` is the day, `conversation_id` the chosen conversation; an
   unknown name is an error. Date and timestamp literals are shifted so the earliest one
   falls on the chosen day, and a UUID literal becomes the chosen conversation.
   Without docs/sql.md (or with no query in it) a built-in representative set runs instead,
   and the summary says so ("queries_source").
5. Time, on one warm connection: each query once (first_ms, rows fetched to the client),
   then --runs more times (median_ms, max_ms); `SELECT count(*) FROM events` the same way,
   before and after the queries, as the reference. The budget check of the issue ("with 1M
   events, v_conversation_facts filtered to one day returns in under 1 s") runs as two
   explicit checks: `WHERE start_day = <day>` and a `start_ts` half-open range over the day,
   both fetching every column; within budget when each one's max_ms is under 1000.
6. EXPLAIN (ANALYZE, BUFFERS) of the slowest documented query and of the start_day check go
   to stderr; the summary keeps their execution, planning and JIT milliseconds and top
   buffers line. The slowest query is the one with the greatest median; ratio_to_reference
   is its median over the reference's. The planner settings that shape these plans (JIT
   above all: the views' cost estimates make PostgreSQL compile them where LLVM is
   installed) are in the summary too.

--prepare SQL (repeatable) runs a statement after the projection and before VACUUM
(ANALYZE), e.g. a candidate index or a CREATE OR REPLACE VIEW, so a change to the views can be
measured on the same data before it goes into a migration.

Database rule as bench/append.py: with RECORDER_DATABASE_URL set, a scratch database
`recorder_bench_<pid>` on that server (created, migrated, dropped); otherwise the embedded
server in a temporary state directory.

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Timings are reported, never asserted: only a correctness failure (a documented query that
errors, a check whose row count is not the day's conversations, a log or projection that
does not add up) exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import random
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

# bench/ is not a package: reuse append.py's workload, database rule and helpers, and
# api.py's load and projection steps.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import load_log, rebuild_log, table_counts
from append import (
    BASE_TS_MS,
    Conversation,
    CorrectnessError,
    Workload,
    bench_database,
    report,
    say,
    server_settings,
)

from recorder.eventlog.records import EventRecord

BUDGET = {"facts_one_day_ms": 1000}
DAY_MS = 86_400_000
FIRST_DAY_MS = BASE_TS_MS - BASE_TS_MS % DAY_MS  # midnight UTC of the workload's day
DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
REFERENCE_SQL = "SELECT count(*) FROM events"
STATEMENT_TIMEOUT = "300s"
CLOSE_REASONS = ("AGENT", "CONSUMER", "SYSTEM")

# Used when docs/sql.md is missing or holds no query: what the issue asks analysts to answer.
FALLBACK_QUERIES: dict[str, str] = {
    "first_response_by_skill": """
        SELECT skill_id, count(*) AS conversations,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response_s) AS p50_s,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY first_response_s) AS p90_s
        FROM v_conversation_facts
        WHERE start_ts >= :from AND start_ts < :to AND first_response_s IS NOT NULL
        GROUP BY skill_id ORDER BY skill_id""",
    "csat_by_close_reason": """
        SELECT close_reason, count(*) AS closed, count(csat_rate) AS responses,
               avg(csat_rate)::numeric(4, 2) AS csat_average
        FROM v_conversation_facts
        WHERE state = 'CLOSE' AND start_ts >= :from AND start_ts < :to
        GROUP BY close_reason ORDER BY close_reason""",
    "open_past_ttr": """
        SELECT conversation_id, skill_id, start_ts, effective_ttr
        FROM v_conversation_facts
        WHERE state = 'OPEN' AND effective_ttr < now()
        ORDER BY effective_ttr LIMIT 100""",
    "messages_per_hour": """
        SELECT date_trunc('hour', server_ts) AS hour, author_role, count(*) AS messages
        FROM v_messages
        WHERE server_ts >= :from AND server_ts < :to
        GROUP BY 1, 2 ORDER BY 1, 2""",
    "daily_for_a_day": "SELECT * FROM v_daily WHERE day = :day",
    "facts_for_a_day": "SELECT * FROM v_conversation_facts WHERE start_day = :day",
    "messages_of_a_conversation": """
        SELECT * FROM v_messages WHERE conversation_id = :conversation_id
        ORDER BY dialog_id, sequence""",
}


def iso_day(day: dt.date) -> str:
    return day.isoformat()


# -- the workload --------------------------------------------------------------------------------


class AnalyticsWorkload(Workload):
    """append.Workload with conversations over `days` days and CLOSE/CSAT/TTR facts.

    The extra choices draw on a random stream of their own, so the messages, receipts and
    UPSERT order are exactly append.Workload's for the same seed."""

    def __init__(self, seed: int, conversations: int, identities: int, days: int) -> None:
        super().__init__(seed, conversations, identities)
        self.extra = random.Random(seed * 1_000_003 + days)
        for conversation in self.conversations:
            start = FIRST_DAY_MS + self.extra.randrange(days * DAY_MS)
            conversation.start_ts = conversation.clock_ms = start

    def _upsert(self, conversation: Conversation) -> EventRecord:
        record = super()._upsert(conversation)
        payload = orjson.loads(record.payload)
        result = payload["result"]
        details = result["conversationDetails"]
        if details["state"] == "OPEN" and self.extra.random() < 0.1:
            # Waiting for an agent (in queue): the TTR deadline runs. Else an agent holds it.
            result["effectiveTTR"] = conversation.start_ts + details["ttr"]["value"] * 1000
        if details["state"] != "CLOSE" and conversation.updates > 1 and self.extra.random() < 0.3:
            # The workload closes only after 6 UPSERTs, which few of its conversations see.
            details["state"] = details["stage"] = details["dialogs"][0]["state"] = "CLOSE"
        if details["state"] == "CLOSE":
            details["endTs"] = details["metaDataLastUpdateTs"]
            details["closeReason"] = self.extra.choice(CLOSE_REASONS)
            if self.extra.random() < 0.5:
                details["csat"] = {
                    "csatRate": self.extra.choices((1, 2, 3, 4, 5), (1, 1, 2, 4, 6))[0],
                    "csatResolutionConfirmation": self.extra.random() < 0.7,
                    "status": "FILLED",
                }
        record.payload = orjson.dumps(payload).decode()
        return record


# -- the documented queries ----------------------------------------------------------------------

DOC_QUERY = re.compile(
    r"<!--\s*query:\s*(?P<name>[^\s>]+)\s*-->\s*```sql[^\n]*\n(?P<sql>.*?)^\s*```",
    re.DOTALL | re.MULTILINE,
)


def parse_doc(path: Path) -> dict[str, str]:
    """NAME -> SQL of each `<!-- query: NAME -->` + ```sql block, in document order."""
    queries: dict[str, str] = {}
    for match in DOC_QUERY.finditer(path.read_text(encoding="utf-8")):
        name = match["name"]
        if name in queries:
            raise CorrectnessError(f"{path}: query {name!r} is documented twice")
        queries[name] = match["sql"].strip()
    return queries


def load_queries(path: Path) -> tuple[dict[str, str], str]:
    if not path.is_file():
        say(f"NOTE: {path} not found: timing the built-in representative queries instead "
            "(the summary says queries_source=builtin)")
        return dict(FALLBACK_QUERIES), "builtin"
    queries = parse_doc(path)
    if not queries:
        say(f"NOTE: {path} holds no `<!-- query: NAME -->` + ```sql block: timing the built-in "
            "representative queries instead (queries_source=builtin)")
        return dict(FALLBACK_QUERIES), "builtin"
    say(f"{len(queries)} documented queries in {path}: {', '.join(queries)}")
    try:
        return queries, str(path.resolve().relative_to(DOC.parent.parent))
    except ValueError:
        return queries, str(path)


# A string literal, a -- comment, a psql :'var' / :"var" / :var (not a ::cast), or anything else.
TOKEN = re.compile(
    r"(?P<string>'(?:[^']|'')*')"
    r"|(?P<comment>--[^\n]*)"
    r"|(?<![:\w]):(?P<quote>['\"]?)(?P<var>[A-Za-z_]\w*)(?P=quote)"
)
DATE_LITERAL = re.compile(r"'(\d{4}-\d{2}-\d{2})([ T][^']*)?'")
UUID_LITERAL = re.compile(r"'[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                          r"[0-9a-fA-F]{12}'")


@dataclasses.dataclass
class Sample:
    day: dt.date
    conversation_id: str
    skill_id: str | None

    def values(self) -> dict[str, str]:
        """SQL literals for the placeholder names a document may use."""
        day, next_day = iso_day(self.day), iso_day(self.day + dt.timedelta(days=1))
        start, end = f"'{day} 00:00:00+00'", f"'{next_day} 00:00:00+00'"
        values = {"conversation_id": f"'{self.conversation_id}'",
                  "conversation": f"'{self.conversation_id}'",
                  "skill_id": "NULL" if self.skill_id is None else f"'{self.skill_id}'",
                  "skill": "NULL" if self.skill_id is None else f"'{self.skill_id}'"}
        for name in ("day", "date", "start_day", "from_day", "since_day"):
            values[name] = f"'{day}'"
        for name in ("to_day", "until_day", "end_day", "next_day"):
            values[name] = f"'{next_day}'"
        for name in ("from", "since", "start", "start_ts", "from_ts", "since_ts", "begin"):
            values[name] = start
        for name in ("to", "until", "end", "end_ts", "to_ts", "until_ts"):
            values[name] = end
        return values


def bind(name: str, sql: str, sample: Sample) -> str:
    """The query with its placeholders filled and its literal day/conversation moved onto the
    sample's, each substitution said on stderr. Unknown placeholders are a correctness error."""
    values = sample.values()
    dates = sorted({dt.date.fromisoformat(date[1]) for m in TOKEN.finditer(sql)
                    if m["string"] and (date := DATE_LITERAL.fullmatch(m["string"]))})
    shift = sample.day - dates[0] if dates else dt.timedelta(0)
    notes: list[str] = []
    unknown: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match["comment"] is not None:
            return match[0]
        if match["string"] is not None:
            text = match["string"]
            date = DATE_LITERAL.fullmatch(text)
            if date and shift:
                moved = iso_day(dt.date.fromisoformat(date[1]) + shift)
                notes.append(f"{date[1]}->{moved}")
                return f"'{moved}{date[2] or ''}'"
            if UUID_LITERAL.fullmatch(text):
                notes.append(f"{text}->'{sample.conversation_id}'")
                return f"'{sample.conversation_id}'"
            return text
        var = match["var"]
        if var.lower() not in values:
            unknown.append(var)
            return match[0]
        notes.append(f":{var}={values[var.lower()]}")
        return values[var.lower()]

    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("\\")]
    bound = TOKEN.sub(replace, "\n".join(lines)).strip().rstrip(";").strip()
    if unknown:
        raise CorrectnessError(f"query {name}: unknown placeholder(s) {sorted(set(unknown))}; "
                               f"known: {sorted(values)}")
    if notes:
        say(f"  {name}: {', '.join(notes)}")
    return bound


# -- timing --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    first_ms: float
    samples_ms: list[float]
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {"median_ms": round(statistics.median(self.samples_ms), 2),
                "max_ms": round(max(self.samples_ms), 2),
                "first_ms": round(self.first_ms, 2),
                "rows": self.rows}


async def time_query(connection: asyncpg.Connection, sql: str, runs: int) -> Timing:
    """One run (first_ms), then `runs` warm ones; every row is fetched to the client."""
    samples: list[float] = []
    rows = -1
    for _ in range(runs + 1):
        started = time.perf_counter()
        result = await connection.fetch(sql)
        samples.append((time.perf_counter() - started) * 1000)
        if rows not in (-1, len(result)):
            raise CorrectnessError(f"row count changed between runs: {rows} -> {len(result)}")
        rows = len(result)
    return Timing(first_ms=samples[0], samples_ms=samples[1:], rows=rows)


async def explain(connection: asyncpg.Connection, label: str, sql: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) to stderr; a few figures of it back."""
    plan = [r[0] for r in await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")]
    say(f"EXPLAIN (ANALYZE, BUFFERS) of {label}:")
    for line in plan:
        say(f"    {line}")
    summary: dict[str, Any] = {"top": plan[0].strip()}
    for line in plan:
        if m := re.match(r"\s*Execution Time: ([\d.]+) ms", line):
            summary["execution_ms"] = float(m[1])
        elif m := re.match(r"\s*Planning Time: ([\d.]+) ms", line):
            summary["planning_ms"] = float(m[1])
        elif m := re.match(r"\s*Timing: .*Total ([\d.]+) ms", line):
            summary["jit_ms"] = float(m[1])  # JIT compilation, inside the execution time
    first_buffers = next((line.strip() for line in plan if "Buffers:" in line), None)
    if first_buffers:
        summary["buffers"] = first_buffers.removeprefix("Buffers: ")
    return summary


# -- main ----------------------------------------------------------------------------------------


async def planner_settings(dsn: str) -> dict[str, Any]:
    """What else shapes these plans: JIT (compiles costly plans: the views' estimates are),
    memory for sorts and hashes, and the cost model."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN ('jit', 'jit_above_cost', "
            "'jit_optimize_above_cost', 'jit_inline_above_cost', 'work_mem', "
            "'effective_cache_size', 'random_page_cost', 'max_parallel_workers_per_gather')")
        available = await connection.fetchval("SELECT pg_jit_available()")
    finally:
        await connection.close()
    return {**{r["name"]: r["setting"] for r in rows}, "jit_available": available}


async def choose_sample(connection: asyncpg.Connection) -> tuple[Sample, dict[str, int]]:
    days = {iso_day(r["day"]): int(r["n"]) for r in await connection.fetch(
        "SELECT (timezone('UTC', start_ts))::date AS day, count(*) AS n FROM conversations "
        "WHERE start_ts IS NOT NULL GROUP BY 1 ORDER BY 1")}
    if not days:
        raise CorrectnessError("no conversation has a start_ts")
    busiest = dt.date.fromisoformat(max(days, key=lambda d: (days[d], d)))
    row = await connection.fetchrow(
        "SELECT c.conversation_id, c.skill_id, count(*) AS n FROM conversations c "
        "JOIN messages m USING (conversation_id) "
        "WHERE (timezone('UTC', c.start_ts))::date = $1 "
        "GROUP BY c.conversation_id, c.skill_id ORDER BY n DESC, c.conversation_id LIMIT 1",
        busiest)
    if row is None:
        raise CorrectnessError(f"no conversation of {busiest} has a message")
    say(f"day {busiest}: {days[iso_day(busiest)]:,} conversations; conversation "
        f"{row['conversation_id']} ({row['n']} messages, skill {row['skill_id']})")
    return Sample(busiest, row["conversation_id"], row["skill_id"]), days


async def run_queries(dsn: str, queries: dict[str, str], sample: Sample, day_conversations: int,
                      runs: int) -> dict[str, Any]:
    connection = await asyncpg.connect(
        dsn, server_settings={"statement_timeout": STATEMENT_TIMEOUT})
    try:
        bound = {name: bind(name, sql, sample) for name, sql in queries.items()}
        day = iso_day(sample.day)
        next_day = iso_day(sample.day + dt.timedelta(days=1))
        checks_sql = {
            "facts_start_day": f"SELECT * FROM v_conversation_facts WHERE start_day = '{day}'",
            "facts_start_ts_range": (
                f"SELECT * FROM v_conversation_facts WHERE start_ts >= '{day} 00:00:00+00' "
                f"AND start_ts < '{next_day} 00:00:00+00'"),
        }

        say(f"reference: {REFERENCE_SQL}, 1 + {runs} runs")
        reference = [await time_query(connection, REFERENCE_SQL, runs)]

        timings: dict[str, Timing] = {}
        failures: dict[str, str] = {}
        for name, sql in bound.items():
            try:
                timings[name] = timing = await time_query(connection, sql, runs)
            except (asyncpg.PostgresError, CorrectnessError) as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                say(f"  {name}: FAILED {failures[name]}")
                continue
            figures = timing.as_dict()
            say(f"  {name}: median {figures['median_ms']} ms, max {figures['max_ms']} ms, "
                f"first {figures['first_ms']} ms, {timing.rows:,} rows")

        checks: dict[str, Timing] = {}
        for name, sql in checks_sql.items():
            checks[name] = timing = await time_query(connection, sql, runs)
            figures = timing.as_dict()
            within = figures["max_ms"] < BUDGET["facts_one_day_ms"]
            say(f"  check {name}: median {figures['median_ms']} ms, max {figures['max_ms']} ms "
                f"(budget {BUDGET['facts_one_day_ms']} ms: {'within' if within else 'OVER'}), "
                f"{timing.rows:,} rows")
            if timing.rows != day_conversations:
                failures[f"check {name}"] = (f"{timing.rows} rows, but {day} holds "
                                             f"{day_conversations} conversations")

        reference.append(await time_query(connection, REFERENCE_SQL, runs))
        if failures:
            raise CorrectnessError("; ".join(f"{k}: {v}" for k, v in failures.items()))

        slowest = max(timings, key=lambda n: statistics.median(timings[n].samples_ms))
        slowest_plan = await explain(connection, f"the slowest query, {slowest}", bound[slowest])
        facts_plan = await explain(connection, "check facts_start_day",
                                   checks_sql["facts_start_day"])
    finally:
        await connection.close()
    return {"timings": timings, "checks": checks, "reference": reference, "slowest": slowest,
            "slowest_plan": slowest_plan, "facts_plan": facts_plan, "bound": bound,
            "checks_sql": checks_sql}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    queries, source = load_queries(args.doc)
    workload = AnalyticsWorkload(args.seed, args.conversations, args.identities, args.days)
    async with bench_database() as (target, database):
        settings = await server_settings(target.dsn)
        planner = await planner_settings(target.dsn)
        say(f"server {settings}; planner {planner}")

        say(f"phase load: {args.events:,} events over {args.conversations:,} conversations "
            f"starting over {args.days} days, COPYed into events ({args.copy_chunk:,} per COPY)")
        load_s = await load_log(target.dsn, workload, args.events, args.copy_chunk)
        say(f"  {load_s:.1f}s ({args.events / load_s:,.0f} events/s)")

        say(f"phase project: recorder.rebuild swap=True over 0 -> {args.events:,} "
            f"(batch {args.load_batch:,})")
        project_s = await rebuild_log(target, args.events, args.load_batch)
        connection = await asyncpg.connect(target.dsn)
        try:
            for statement in args.prepare:
                say(f"  --prepare: {statement}")
                await connection.execute(statement)
            vacuum_started = time.perf_counter()
            await connection.execute("VACUUM (ANALYZE)")
            await connection.execute("CHECKPOINT")
            vacuum_s = time.perf_counter() - vacuum_started
            sample, days = await choose_sample(connection)
            sizes = {r["name"]: int(r["bytes"]) for r in await connection.fetch(
                "SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes "
                "FROM pg_class c WHERE c.relname = ANY($1::text[])",
                ["events", "conversations", "dialogs", "participants", "messages", "receipts"])}
        finally:
            await connection.close()
        counts = await table_counts(target.dsn)
        say(f"  {project_s:.1f}s ({args.events / project_s:,.0f} events/s), VACUUM (ANALYZE) + "
            f"CHECKPOINT {vacuum_s:.1f}s; rows {counts}")
        if counts["events"] != args.events or counts["conversations"] != args.conversations:
            raise CorrectnessError(f"rows {counts}: expected {args.events} events and "
                                   f"{args.conversations} conversations")
        day_conversations = days[iso_day(sample.day)]

        say(f"phase queries ({source}): 1 + {args.runs} runs each, one connection")
        run = await run_queries(target.dsn, queries, sample, day_conversations, args.runs)

    timings: dict[str, Timing] = run["timings"]
    checks: dict[str, Timing] = run["checks"]
    reference_samples = [s for r in run["reference"] for s in r.samples_ms]
    reference_ms = statistics.median(reference_samples)
    slowest = run["slowest"]
    slowest_ms = statistics.median(timings[slowest].samples_ms)
    facts = {name: timing.as_dict() for name, timing in checks.items()}
    within = all(f["max_ms"] < BUDGET["facts_one_day_ms"] for f in facts.values())
    over_1s = sorted(n for n, t in timings.items() if statistics.median(t.samples_ms) >= 1000)
    total_s = time.perf_counter() - started
    say(f"reference {REFERENCE_SQL}: median {reference_ms:.1f} ms; slowest documented query "
        f"{slowest}: median {slowest_ms:.1f} ms = {slowest_ms / reference_ms:.2f}x the reference")
    say(f"v_conversation_facts for {sample.day} ({day_conversations:,} conversations): "
        f"start_day {facts['facts_start_day']['median_ms']} ms, start_ts range "
        f"{facts['facts_start_ts_range']['median_ms']} ms; budget "
        f"{BUDGET['facts_one_day_ms']} ms; within budget: {within}")
    say(f"total {total_s:.0f}s")
    return {
        "events": counts["events"],
        "conversations": counts["conversations"],
        "queries": {name: timing.as_dict() for name, timing in timings.items()},
        "reference_count_ms": round(reference_ms, 2),
        "reference_count_max_ms": round(max(reference_samples), 2),
        "slowest_query": slowest,
        "slowest_ms": round(slowest_ms, 2),
        "ratio_to_reference": round(slowest_ms / reference_ms, 3),
        "queries_over_1s": over_1s,
        "facts_one_day_ms": facts["facts_start_day"]["median_ms"],
        "facts_one_day_max_ms": facts["facts_start_day"]["max_ms"],
        "facts_one_day_range_ms": facts["facts_start_ts_range"]["median_ms"],
        "facts_one_day_range_max_ms": facts["facts_start_ts_range"]["max_ms"],
        "facts_one_day_rows": facts["facts_start_day"]["rows"],
        "budget_facts_one_day_ms": BUDGET["facts_one_day_ms"],
        "within_budget": within,
        "checks": facts,
        "slowest_plan": run["slowest_plan"],
        "facts_plan": run["facts_plan"],
        "placeholders": {"from": f"{sample.day} 00:00:00+00",
                         "to": f"{sample.day + dt.timedelta(days=1)} 00:00:00+00",
                         "conversation_id": sample.conversation_id},
        "day": iso_day(sample.day),
        "day_conversations": day_conversations,
        "day_share": round(day_conversations / counts["conversations"], 4),
        "days": len(days),
        "queries_source": source,
        "runs": args.runs,
        "rows": counts,
        "bytes": sizes,
        "load_s": round(load_s, 1),
        "project_s": round(project_s, 1),
        "vacuum_s": round(vacuum_s, 1),
        "total_s": round(total_s, 1),
        "seed": args.seed,
        "prepare": args.prepare,
        "database": database,
        "server": settings,
        "planner": planner,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=7,
                        help="UTC days the conversations start over (uniformly)")
    parser.add_argument("--identities", type=int, default=4, help="consumer identities")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--copy-chunk", type=int, default=20_000)
    parser.add_argument("--load-batch", type=int, default=20_000,
                        help="events per batch while projecting the loaded log")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed warm runs of each query, after one first run")
    parser.add_argument("--doc", type=Path, default=DOC,
                        help="the markdown file of documented queries")
    parser.add_argument("--prepare", action="append", default=[], metavar="SQL",
                        help="a statement run after the projection, before VACUUM (ANALYZE): "
                             "to try an index or a view change (repeatable; in the summary)")
    args = parser.parse_args(argv)
    if min(args.events, args.conversations, args.days, args.runs, args.identities) <= 0:
        parser.error("--events, --conversations, --days, --runs, --identities must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: asyncio.run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
