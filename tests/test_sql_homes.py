"""SQL lives beside its owner: statements only in the packages' SQL modules (and migrations)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|LOCK|TRUNCATE|WITH|COPY"
    r"|SET|LISTEN|NOTIFY)\s"
)


def sql_strings(source: str) -> list[tuple[int, str]]:
    """String literals (and f-strings, by their leading text) that start like a statement."""
    found = []
    for node in ast.walk(ast.parse(source)):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                text = first.value
        if text is not None and SQL_START.match(text):
            found.append((node.lineno, text.strip().splitlines()[0][:60]))
    return found


def test_the_detector_sees_statements_and_not_prose() -> None:
    assert sql_strings('x = "SELECT 1"\ny = f"INSERT INTO t VALUES ({v})"\n')
    assert sql_strings('q = """\n    WITH a AS (SELECT 1) SELECT * FROM a\n"""\n')
    assert not sql_strings('"""Select what to show."""\nm = "supports UPDATE to CLOSE only"\n')


def test_no_sql_outside_the_sql_modules() -> None:
    offenders = []
    for path in sorted((ROOT / "recorder").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if path.name == "sql.py" or "migrations" in relative.parts:
            continue
        offenders += [f"{relative}:{line}: {text}" for line, text in sql_strings(path.read_text())]
    assert not offenders, "SQL belongs in the package's sql.py:\n" + "\n".join(offenders)


def test_each_log_head_read_is_written_once() -> None:
    texts = [path.read_text() for path in (ROOT / "recorder").rglob("*.py")]
    assert sum(text.count("FROM log_head WHERE id = 1") for text in texts) == 1
