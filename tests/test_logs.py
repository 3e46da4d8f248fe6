"""Log lines: every format names its event, and no secret reaches a line (issue 7)."""

from __future__ import annotations

import ast
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt as pyjwt
import orjson
import pytest

from recorder import logs
from recorder.cli import register_settings_secrets
from recorder.config import ConsumerIdentity, Secret, Settings
from recorder.db.target import url_passwords
from recorder.logs import (
    RedactionFilter,
    clear_secrets,
    configure_logging,
    event,
    redact,
    register_secret,
)
from recorder.ums.tokens import decode_token

FORMATS = ("text", "json", "journal")
JWT = pyjwt.encode({"sub": "consumer-1", "exp": 4102444800}, "signing-key-" * 4,
                   algorithm="HS256")
SIGNATURE = JWT.rsplit(".", 1)[1]
API_TOKEN = "api-token-that-must-never-be-logged-5f1c"  # not JWT-shaped: only registration helps
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d")
RECORDER = Path(__file__).resolve().parent.parent / "recorder"


@pytest.fixture(autouse=True)
def forget_secrets() -> Iterator[None]:
    """Registered secrets are process-wide; the root handlers are restored by conftest."""
    yield
    clear_secrets()


Emit = Callable[[Callable[[], None]], str]


@pytest.fixture
def emit(capsys: pytest.CaptureFixture[str]) -> Callable[[str], Emit]:
    """emit(fmt)(action): configure logging as the daemon does, run action, return stderr."""

    def configured(log_format: str) -> Emit:
        def run(action: Callable[[], None]) -> str:
            capsys.readouterr()
            configure_logging(log_format, "DEBUG")  # binds the handler to the captured stderr
            action()
            return capsys.readouterr().err

        return run

    return configured


def lines_of(output: str) -> list[str]:
    return [line for line in output.split("\n") if line]


# -- formats ---------------------------------------------------------------------------------


def log_session_closed() -> None:
    logging.getLogger("recorder.ums.client").info(
        "identity %s: session %s closed (code %s %s)", "default", "s-1", 1000, "token renewal",
        extra=event("ums.session.closed"),
    )


MESSAGE = "identity default: session s-1 closed (code 1000 token renewal)"


def test_text_line_shows_the_event(emit: Callable[[str], Emit]) -> None:
    [line] = lines_of(emit("text")(log_session_closed))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    ums\.session\.closed "
        r"recorder\.ums\.client: " + re.escape(MESSAGE), line), line


def test_json_line_has_an_event_key(emit: Callable[[str], Emit]) -> None:
    [line] = lines_of(emit("json")(log_session_closed))
    entry = orjson.loads(line)
    assert entry["event"] == "ums.session.closed"
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "info", "recorder.ums.client", MESSAGE)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_journal_line_has_a_priority_and_no_timestamp(emit: Callable[[str], Emit]) -> None:
    [line] = lines_of(emit("journal")(log_session_closed))
    assert line == f"<6>ums.session.closed recorder.ums.client: {MESSAGE}"


def test_journal_priorities_and_tracebacks(emit: Callable[[str], Emit]) -> None:
    def action() -> None:
        log = logging.getLogger("recorder.writer")
        log.debug("d", extra=event("writer.test.debug"))
        log.warning("w", extra=event("writer.test.warning"))
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", extra=event("writer.listener.failed"))
        log.critical("c", extra=event("writer.test.critical"))

    lines = lines_of(emit("journal")(action))
    assert lines[0] == "<7>writer.test.debug recorder.writer: d"
    assert lines[1] == "<4>writer.test.warning recorder.writer: w"
    assert lines[2] == "<3>writer.listener.failed recorder.writer: failed"
    # journald takes each line as an entry: the traceback keeps the error priority
    traceback = lines[3:-1]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<3>") for line in traceback)
    assert lines[-1] == "<2>writer.test.critical recorder.writer: c"
    assert not any(TIMESTAMP.search(line) for line in lines)


@pytest.mark.parametrize("log_format", FORMATS)
def test_lines_without_an_event_are_named_after_their_logger(
    emit: Callable[[str], Emit], log_format: str
) -> None:
    def action() -> None:
        logging.getLogger("aiohttp.client").warning("plain %s", "words")
        logging.getLogger().warning("from root")

    first, second = lines_of(emit(log_format)(action))
    if log_format == "json":
        assert orjson.loads(first)["event"] == "aiohttp.client"
        assert orjson.loads(second)["event"] == "root"
    else:
        assert first.endswith("aiohttp.client aiohttp.client: plain words")
        assert second.endswith("root root: from root")


def test_event_names_are_dotted_lower_case() -> None:
    assert event("ums.session.closed") == {"event": "ums.session.closed"}


# -- redaction ---------------------------------------------------------------------------------


def raise_and_log(log: logging.Logger, secret: str) -> None:
    try:
        try:
            raise KeyError(f"inner {secret}")
        except KeyError as inner:
            raise ValueError(f"request failed with {secret}") from inner
    except ValueError:
        log.exception("request failed", extra=event("test.request.failed"))


def leak_everywhere(secret: str) -> Callable[[], None]:
    """The same secret by every way a line is made."""

    def action() -> None:
        ours = logging.getLogger("recorder.ums.client")
        theirs = logging.getLogger("aiohttp.client")
        ours.info(f"in the message {secret}", extra=event("test.message"))
        ours.info("in the args %s and %r", secret, {"value": secret}, extra=event("test.args"))
        raise_and_log(ours, secret)
        theirs.warning("third party: %s", secret)
        raise_and_log(theirs, secret)
        ours.info("with stack %s", secret, stack_info=True, extra=event("test.stack"))

    return action


@pytest.mark.parametrize("log_format", FORMATS)
@pytest.mark.parametrize(
    ("secret", "hidden"),
    [
        (JWT, [JWT, SIGNATURE]),
        (f"Authorization: Bearer {API_TOKEN}", [API_TOKEN]),
        (f"Authorization: jwt {API_TOKEN}", [API_TOKEN]),
        (f"headers={{'Authorization': 'Bearer {API_TOKEN}'}}", [API_TOKEN]),
        (f"GET /events?access_token={API_TOKEN}&after=3", [API_TOKEN]),
        (f'{{"jwt": "{API_TOKEN}", "sub": "x"}}', [API_TOKEN]),
        (f"token={API_TOKEN}", [API_TOKEN]),
        (f"postgresql://recorder:{API_TOKEN}@db.example:5432/recorder", [API_TOKEN]),
    ],
    ids=["jwt", "bearer", "auth-jwt", "header-dict", "query", "json", "token=", "url"],
)
def test_credentials_never_reach_a_line(
    emit: Callable[[str], Emit], log_format: str, secret: str, hidden: list[str]
) -> None:
    output = emit(log_format)(leak_everywhere(secret))
    assert output.count("[redacted") >= 8, output  # every line was written, redacted
    for value in hidden:
        assert value not in output
    if log_format == "json":
        for line in lines_of(output):
            orjson.loads(line)


@pytest.mark.parametrize("log_format", FORMATS)
def test_registered_secrets_never_reach_a_line(
    emit: Callable[[str], Emit], log_format: str
) -> None:
    register_secret(API_TOKEN)
    output = emit(log_format)(leak_everywhere(f"the token is {API_TOKEN}!"))
    assert API_TOKEN not in output
    assert output.count("the token is [redacted]!") >= 8, output


@pytest.mark.parametrize("log_format", FORMATS)
def test_ordinary_lines_are_unchanged(emit: Callable[[str], Emit], log_format: str) -> None:
    register_secret(API_TOKEN)
    messages = [
        MESSAGE,
        "identity default: token file /run/credentials/jwt holds no newer token",
        "using PostgreSQL postgresql://recorder:***@localhost:5432/recorder?password=***",
        "consumer token: expired; bearer token for the read API",
        "projection skipped 2 events it cannot read, at positions [1, 3]",
        "export daily: 120 rows of conversations (0, 120] -> /srv/exports/c.parquet",
        "100% done {'a': 1} \"quoted\" eyJ alone",
    ]

    def action() -> None:
        for message in messages:
            logging.getLogger("recorder").info("%s", message, extra=event("test.ordinary"))

    output = lines_of(emit(log_format)(action))
    shown = ([orjson.loads(line)["message"] for line in output] if log_format == "json"
             else [line.split("recorder: ", 1)[1] for line in output])
    assert shown == messages


def test_the_filter_rewrites_the_record_for_every_formatter() -> None:
    try:
        raise RuntimeError(f"token {JWT}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "args %s", (JWT,),
                                   exc_info=sys.exc_info())
    assert RedactionFilter().filter(record)
    assert (record.msg, record.args, record.exc_info) == ("args [redacted jwt]", None, None)
    assert record.exc_text is not None and "RuntimeError: token [redacted jwt]" in record.exc_text
    for formatter in (logs.TextFormatter(), logs.JsonFormatter(), logs.JournalFormatter(),
                      logging.Formatter()):
        text = formatter.format(record)
        assert JWT not in text and "[redacted jwt]" in text and "RuntimeError" in text


def test_unformattable_arguments_do_not_raise(emit: Callable[[str], Emit]) -> None:
    output = emit("text")(lambda: logging.getLogger("x").info("%d of %d", JWT))
    assert "(unformattable log arguments: ('[redacted jwt]',))" in output
    assert JWT not in output


def test_redact_rules() -> None:
    assert redact(f"a {JWT} b") == "a [redacted jwt] b"
    assert redact("Authorization: Bearer abcdefgh1234") == "Authorization: Bearer [redacted]"
    assert redact("Bearer abcdefgh1234") == "Bearer [redacted]"
    assert redact("password='p4ss word'") == "password='[redacted]'"
    assert redact("X-Api-Key: 0123456789abcdef0123") == "X-Api-Key: [redacted]"
    assert redact("postgresql://u:p4ss@h/db") == "postgresql://u:[redacted]@h/db"
    assert redact(redact(f"token={JWT}")) == "token=[redacted]"  # idempotent
    # five segments: an encrypted JWT (JWE, "dir": no key segment)
    assert redact("eyJhbGciOiJkaXIifQ..aXY.Y2lwaGVy.dGFn x") == "[redacted jwt] x"


def test_registered_values() -> None:
    register_secret("abc")  # too short to register: it would blank out ordinary words
    register_secret("  Hunter2-Secret\n")  # surrounding whitespace is not part of it
    assert redact("abc Hunter2-Secret hunter2-secret") == "abc [redacted] hunter2-secret"
    register_secret(None)
    # a value overlapping a rule's match is still removed whole
    register_secret("ab,cdef")
    assert redact("password=ab,cdef") == "password=[redacted]"


def test_transient_secrets_are_bounded() -> None:
    register_secret("pinned-secret-value")
    for index in range(200):
        register_secret(f"transient-{index:04d}", transient=True)
    assert redact("pinned-secret-value") == "[redacted]"
    assert redact("transient-0199") == "[redacted]"
    assert redact("transient-0000") == "transient-0000"  # the oldest runtime tokens age out


def test_decoded_tokens_are_registered() -> None:
    decode_token(f" {JWT}\n")
    assert redact(JWT) == "[redacted]"  # the registered value, not just the JWT shape


def test_cli_registers_the_configured_secrets() -> None:
    settings = Settings(
        database_url=Secret("postgresql://rec:p%40ss-word@db/rec?sslmode=require"),
        api_token=Secret(API_TOKEN),
        consumer_jwt=Secret("consumer-jwt-value"),
        consumers=(ConsumerIdentity(name="b", jwt=Secret("second-jwt-value")),),
    )
    register_settings_secrets(settings)
    line = f"{API_TOKEN} consumer-jwt-value second-jwt-value p@ss-word p%40ss-word"
    assert redact(line) == " ".join(["[redacted]"] * 5)
    assert sorted(url_passwords("postgresql://u@h/db?password=x%20y&PASSWORD=z")) == [
        "x y", "z"]
    assert url_passwords("postgresql://h/db") == []


# -- every log call names its event ------------------------------------------------------------

LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def unnamed_log_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loggers = {  # module-level `log = logging.getLogger(...)`
        target.id
        for node in tree.body if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "logging.getLogger"
        for target in node.targets if isinstance(target, ast.Name)
    }
    helpers = {  # `from recorder.logs import event [as ...]`
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "recorder.logs"
        for alias in node.names if alias.name == "event"
    }
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS and isinstance(node.func.value, ast.Name)):
            continue
        if node.func.value.id not in loggers | {"logging"}:
            continue
        where = f"{path.name if path.parent == RECORDER else path}:{node.lineno}"
        extra = next((k.value for k in node.keywords if k.arg == "extra"), None)
        if not (isinstance(extra, ast.Call) and isinstance(extra.func, ast.Name)
                and extra.func.id in helpers and len(extra.args) == 1
                and isinstance(extra.args[0], ast.Constant)
                and isinstance(extra.args[0].value, str)):
            problems.append(f"{where}: no extra=event(\"...\")")
        elif not re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+", extra.args[0].value):
            problems.append(f"{where}: event name {extra.args[0].value!r} is not dotted lower case")
    return problems


def test_every_log_call_names_its_event() -> None:
    files = sorted(RECORDER.rglob("*.py"))
    problems = [problem for path in files for problem in unnamed_log_calls(path)]
    assert not problems, "\n".join(problems)


def test_the_scan_finds_unnamed_calls(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import logging\nfrom recorder.logs import event as ev\n"
        "log = logging.getLogger(__name__)\n"
        "log.info('a')\nlog.info('b', extra={'event': 'x.y'})\nlog.info('c', extra=ev('x.y'))\n"
        "log.warning('d', extra=ev('Bad Name'))\nlogging.error('e')\n"
    )
    lines = [int(re.findall(r":(\d+):", problem)[0]) for problem in unnamed_log_calls(sample)]
    assert lines == [4, 5, 7, 8]


def test_asyncpg_pool_retries_are_one_info_line_without_a_traceback(
    emit: Callable[[str], Emit],
) -> None:
    def pool_retry() -> None:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        except ConnectionRefusedError:
            # what asyncpg's pool logs on every retry of its connection floor, up to once a
            # second for as long as the database is down
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection floor; retrying", exc_info=True
            )

    output = emit("text")(pool_retry)
    assert "Traceback" not in output
    (line,) = lines_of(output)
    assert " INFO " in line and " WARNING " not in line
    assert "Failed to restore the pool connection floor; retrying" in line
    assert "Connect call failed" in line, "the cause is kept, on the same line"
