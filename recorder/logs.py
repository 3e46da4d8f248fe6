"""Logging setup: `text` for terminals, `json` for collectors, `journal` for systemd.

Every line names its event: a stable dotted name (`ums.session.closed`) given with
`extra=event(...)`, or the logger's name for lines that give none (third-party libraries).
Shapes (the event always right after the level, so `grep ' ums.session.closed '` finds it):

    text     2026-11-25 10:00:00,123 INFO    ums.session.closed recorder.ums.client: message
    json     {"ts": ..., "level": "info", "event": "ums.session.closed", "logger": ..., ...}
    journal  <6>ums.session.closed recorder.ums.client: message   (journald adds the time)

Every record, whoever logs it, passes `RedactionFilter` on the way out: JWTs, credential
values (`Authorization: Bearer …`, `token=…`, `"jwt": "…"`, URL passwords) and the exact
values given to `register_secret` are replaced before any formatter sees the record.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading
import time
from typing import Any

import orjson


def event(name: str) -> dict[str, str]:
    """`extra=` for a log call: the line's stable event name (`ums.session.closed`, …)."""
    return {"event": name}


def _event_of(record: logging.LogRecord) -> str:
    """The record's event name; the logger's name when the call gave none."""
    name = getattr(record, "event", None)
    if not isinstance(name, str) or not name:
        name = record.name
        record.event = name
    return name


# -- redaction -------------------------------------------------------------------------------

REDACTED = "[redacted]"
REDACTED_JWT = "[redacted jwt]"
# Shorter values would blank out ordinary words; secrets that short are not secrets.
SECRET_MIN_LENGTH = 4
# Runtime tokens (every renewal brings one) are kept for the most recent few; they are JWTs,
# which the JWT rule catches anyway. Values registered at start are kept for good.
_MAX_TRANSIENT_SECRETS = 64

# Three base64url segments, the header a JSON object (`{"` encodes as `eyJ`); JWE has five.
_JWT = r"eyJ[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*\.[A-Za-z0-9_=.-]*"
# Names whose value is a credential; matched anywhere in a name (`access_token`, `X-Api-Key`).
_KEY = r"(?i:tokens?|jwts?|passwords?|passwd|secrets?|api[_-]?keys?)"
_QUOTED = r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
_BARE = r"[^\s&\"',;)}\]>]+"
_RULES = "|".join((
    rf"(?P<jwt>{_JWT})",
    # An Authorization header, in any spelling: the scheme stays, the credentials go.
    r"(?P<auth>(?i:authorization)[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?i:bearer|jwt|token|basic|digest)\s+)?)[^\s\"',;]+",
    r"(?P<bearer>(?i:bearer)\s+)[A-Za-z0-9._~+/=-]{8,}",
    # token=…, "jwt": "…", password='…'; after a colon only quoted or long token-like values,
    # so that prose ("token: expired") stays readable.
    rf"(?P<kveq>{_KEY}[\"']?\s*=\s*)(?:{_QUOTED}|{_BARE})",
    rf"(?P<kvcolon>{_KEY}[\"']?\s*:\s*)(?:{_QUOTED}|[A-Za-z0-9._~+/=-]{{16,}})",
    # scheme://user:password@host
    r"(?P<url>://[^\s:/?#@]*:)[^\s@/?#]+(?=@)",
))
_RULES_RE = re.compile(_RULES)
# What any rule needs to find, case-folded: the common line has none of these, and one search
# of the case-folded line for them (and for registered values) is all it costs. Case-insensitive
# patterns are several times slower in `re` than casefold() and a literal alternation.
_TRIGGERS = ("eyj", "://", "token", "jwt", "passw", "secret", "apikey", "api_key", "api-key",
             "bearer", "authorization")
_TRIGGERS_RE = re.compile("|".join(map(re.escape, _TRIGGERS)))


def _replace(match: re.Match[str]) -> str:
    if match.group("jwt") is not None:
        return REDACTED_JWT
    kept = next(g for g in ("auth", "bearer", "kveq", "kvcolon", "url")
                if match.group(g) is not None)
    prefix = match.group(kept)
    value = match.group(0)[len(prefix):]
    quote = value[0] if value[:1] in ("'", '"') and len(value) >= 2 else ""
    inner = value[1:-1] if quote else value
    if inner.startswith("[redacted") or (inner and inner.strip("*") == ""):
        return match.group(0)  # already redacted, or a mask (mask_url's `***`)
    return f"{prefix}{quote}{REDACTED}{quote}"


class _Secrets:
    """Registered secret values, and the patterns that find and replace them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pinned: dict[str, None] = {}
        self._transient: collections.OrderedDict[str, None] = collections.OrderedDict()
        # (detector, literals), swapped as one: the detector runs on the case-folded line and
        # finds any trigger or registered value; `literals` replaces the values exactly.
        self._patterns: tuple[re.Pattern[str], re.Pattern[str] | None] = (_TRIGGERS_RE, None)
        # Compiled when next needed, not at each add: 2,000 configured identities registered
        # one by one recompiled a growing pattern 2,000 times (minutes at start).
        self._dirty = False

    @property
    def patterns(self) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
        if self._dirty:
            with self._lock:
                if self._dirty:
                    self._compile()
                    self._dirty = False
        return self._patterns

    def add(self, value: str, transient: bool) -> None:
        with self._lock:
            if value in self._pinned:
                return
            if transient:
                if value in self._transient:
                    self._transient.move_to_end(value)
                    return
                self._transient[value] = None
                while len(self._transient) > _MAX_TRANSIENT_SECRETS:
                    self._transient.popitem(last=False)
            else:
                self._pinned[value] = None
                self._transient.pop(value, None)
            self._dirty = True

    def clear(self) -> None:
        with self._lock:
            self._pinned.clear()
            self._transient.clear()
            self._dirty = True

    def _compile(self) -> None:
        values = sorted({*self._pinned, *self._transient}, key=len, reverse=True)
        if not values:
            self._patterns = (_TRIGGERS_RE, None)
            return
        # The detector runs on the case-folded line (casefold, unlike lower, ignores context, so
        # a value in the line is still in the folded line); a hit in another case finds nothing
        # to replace. Values holding a trigger (every JWT holds `eyj`) need no branch of their own.
        folded = {value.casefold() for value in values}
        extra = sorted((v for v in folded if not any(t in v for t in _TRIGGERS)), key=len,
                       reverse=True)
        self._patterns = (
            re.compile("|".join(map(re.escape, (*extra, *_TRIGGERS)))),
            re.compile("|".join(map(re.escape, values))),
        )


_secrets = _Secrets()


def register_secret(value: str | None, *, transient: bool = False) -> None:
    """Never log `value`: from now on it is replaced by `[redacted]` in every log line.

    For configured secrets (API token, consumer JWTs, the database password) and tokens
    obtained at run time (`transient=True`: only the most recent few are kept). Surrounding
    whitespace is ignored; values shorter than SECRET_MIN_LENGTH are not registered.
    """
    if value is None:
        return
    value = value.strip()
    if len(value) >= SECRET_MIN_LENGTH:
        _secrets.add(value, transient)


def clear_secrets() -> None:
    """Forget every registered value (for tests)."""
    _secrets.clear()


def redact(text: str) -> str:
    """`text` with JWTs, credential values and registered secrets replaced."""
    detector, literals = _secrets.patterns
    if detector.search(text.casefold()) is None:  # the common case: one search
        return text
    if literals is not None:  # first, so no rule can consume the start of a secret
        text = literals.sub(REDACTED, text)
    return _RULES_RE.sub(_replace, text)


_EXCEPTION_FORMATTER = logging.Formatter()


class RedactionFilter(logging.Filter):
    """Rewrites a record so that no formatter can show a secret: the final message (after
    %-args), the formatted exception and the stack are redacted; args and exc_info dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: show them, redacted, rather than a logging error
            message = f"{record.msg} (unformattable log arguments: {record.args!r})"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # only the redacted text is left to format
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._redacted = True
        return True


# -- formatters ------------------------------------------------------------------------------

# systemd reads "<N>" at the start of a line as the syslog priority.
_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


#: Set by the role supervisor in each role's process: its lines say which process wrote them.
ROLE_PROCESS_ENV = "RECORDER_ROLE_PROCESS"


def _process_tag() -> str:
    name = os.environ.get(ROLE_PROCESS_ENV)
    return f"[{name}] " if name else ""


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            f"%(asctime)s %(levelname)-7s %(event)s {_process_tag()}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _event_of(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": _event_of(record),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if process := os.environ.get(ROLE_PROCESS_ENV):
            entry["process"] = process
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry).decode()


class JournalFormatter(logging.Formatter):
    """No timestamp (journald stamps each entry); every line of a traceback keeps the
    record's priority, since journald reads each line as an entry of its own."""

    def __init__(self) -> None:
        super().__init__(f"%(event)s {_process_tag()}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _event_of(record)
        prefix = f"<{_JOURNAL_PRIORITY.get(record.levelname, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class PoolRetryFilter(logging.Filter):
    """asyncpg's pool retries its connection floor through an outage, each time at WARNING with
    a traceback (1 s, 2 s, … 60 s apart). The components that use the pool report the outage
    once themselves (the read API, the writer), so keep these as one INFO line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    elif log_format == "journal":
        formatter = JournalFormatter()
    else:
        formatter = TextFormatter()
    handler.setFormatter(formatter)
    # On the handler, not a logger: logger filters skip records propagated from children.
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pgserver logs every command line it runs at INFO; keep that out of ours.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler says "Running job"/"executed successfully" at INFO on every tick; each export
    # run logs its own line. Its warnings (a run skipped: still running) stay.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PoolRetryFilter) for f in pool_log.filters):
        pool_log.addFilter(PoolRetryFilter())
