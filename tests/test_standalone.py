"""The suite stands alone: no code reads the `../shared` reference folder beside the checkout,
and tests/protocol/ holds every protocol fixture the tests use (tests/protocol_files.py).

The scan parses each .py file under tests/ and recorder/ and looks at code, not prose:
docstrings and comments may cite the protocol document (`shared/protocol/protocol.md`), but no
string, path join or environment variable may point at the shared folder.
"""

from __future__ import annotations

import ast
import json
import posixpath
import re
from pathlib import Path

import pytest

from tests.protocol_files import EXAMPLES, PROTOCOL, SCHEMAS, example_json, load_validator

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "recorder")
#: The old way to point the tests at the shared folder (spelt so that this file does not match).
SHARED_VARIABLE = "_".join(("RECORDER", "SHARED", "DIR"))
SHARED = "shared"
SHARED_PATH = re.compile(r"(^|[/\\])(\.\.[/\\]shared([/\\]|$)|shared[/\\]protocol)")
PATH_CALLS = {"Path", "PurePath", "PosixPath", "join", "joinpath"}
EXAMPLE_NAME = re.compile(r"\b(?:req|resp|notif)_\w+\.json\b")


def python_files() -> list[Path]:
    return sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module and its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                out.add(id(body[0].value))
    return out


def names_shared(node: ast.AST) -> bool:
    """A string constant whose first path component is the shared folder."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.strip("/\\").replace("\\", "/").split("/")[0] == SHARED)


def shared_reads(source: str) -> list[str]:
    """Where `source` points at the shared folder: "line N: why", empty if nowhere."""
    found = [f"line {n}: names {SHARED_VARIABLE}"
             for n, line in enumerate(source.splitlines(), 1) if SHARED_VARIABLE in line]
    tree = ast.parse(source)
    prose = docstrings(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in prose and SHARED_PATH.search(node.value)):
            found.append(f"line {line}: path {node.value!r}")
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              and (names_shared(node.left) or names_shared(node.right))):
            found.append(f"line {line}: joins {SHARED!r} onto a path")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in PATH_CALLS and any(names_shared(arg) for arg in node.args):
                found.append(f"line {line}: {name}() with {SHARED!r}")
    return sorted(set(found))


# Code that read the shared folder before tests/protocol/ existed, and code that must pass.
# "<s>" stands for the folder's name so that this file itself stays clean.
OLD_READS = [
    'SHARED = Path(os.environ.get("RECORDER_<S>_DIR", Path(__file__).parents[2] / "<s>"))',
    'root = Path(__file__).resolve().parents[2] / "<s>" / "protocol" / "examples"',
    'examples = Path("../<s>/protocol/examples")',
    'schemas = os.path.join(ROOT, "..", "<s>", "protocol", "schemas")',
    'schemas = Path(ROOT).parent.joinpath("<s>", "protocol")',
    'index = f"{ROOT}/../<s>/protocol/examples/INDEX.md"',
    'frame = open("/work/<s>/protocol/examples/req_get_clock.json").read()',
    '# set RECORDER_<S>_DIR to point the tests elsewhere\nx = 1',
]
NOT_READS = [
    '"""Section references are to <s>/protocol/protocol.md."""\nx = 1',
    'def f():\n    """Read ../<s>/protocol/examples? No."""\n    return 1',
    '# see <s>/protocol/protocol.md section 2\nx = 1',
    'events = [message_event("<s>", i) for i in range(3)]',
    'path = Path(__file__).parent / "protocol" / "examples"',
    'note = "a token bucket <s> by the sockets"',
]


def spell(source: str) -> str:
    return source.replace("<s>", SHARED).replace("<S>", SHARED.upper())


@pytest.mark.parametrize("source", OLD_READS)
def test_the_scan_finds_reads_of_the_shared_folder(source: str) -> None:
    assert shared_reads(spell(source)), spell(source)


@pytest.mark.parametrize("source", NOT_READS)
def test_the_scan_leaves_prose_and_other_uses_alone(source: str) -> None:
    assert shared_reads(spell(source)) == []


def test_no_code_reads_the_shared_folder() -> None:
    files = python_files()
    assert ROOT / "tests" / "protocol_files.py" in files and ROOT / "recorder" / "cli.py" in files
    found = [f"{path.relative_to(ROOT)} {where}" for path in files
             for where in shared_reads(path.read_text(encoding="utf-8"))]
    assert found == [], "read tests/protocol/ (tests/protocol_files.py) instead:\n" + "\n".join(
        found)


def test_the_fixtures_live_inside_the_checkout() -> None:
    assert PROTOCOL == ROOT / "tests" / "protocol"
    assert EXAMPLES.is_dir() and SCHEMAS.is_dir()


def test_every_example_a_test_names_is_in_the_fixture_folder() -> None:
    named = {name for path in python_files() if path.is_relative_to(ROOT / "tests")
             for name in EXAMPLE_NAME.findall(path.read_text(encoding="utf-8"))}
    assert len(named) >= 30, "the tests name the example frames they use"
    have = {p.name for p in EXAMPLES.glob("*.json")}
    assert sorted(named - have) == []


def test_the_example_index_lists_exactly_the_example_files() -> None:
    listed = set(EXAMPLE_NAME.findall((EXAMPLES / "INDEX.md").read_text(encoding="utf-8")))
    have = {p.name for p in EXAMPLES.glob("*.json")}
    assert have and listed == have
    for name in sorted(have):
        json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def test_the_schemas_are_complete_and_every_ref_resolves_inside_the_folder() -> None:
    for name in ("README.md", "validate.py", "ws/consumerRequests.json",
                 "ws/consumerResponses.json", "ws/consumerNotifications.json"):
        assert (SCHEMAS / name).is_file(), name
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    assert "LivePersonInc/developer-center" in readme and "assets/schema/" in readme
    files = sorted(SCHEMAS.rglob("*.json"))
    assert len(files) > 40
    missing = []
    for path in files:
        rel = path.relative_to(SCHEMAS).as_posix()
        refs = re.findall(r'"\$ref"\s*:\s*"([^"#]*)', path.read_text(encoding="utf-8"))
        for ref in filter(None, refs):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), ref))
            if target.startswith("..") or not (SCHEMAS / target).is_file():
                missing.append(f"{rel}: {ref}")
    assert missing == []


def test_the_validator_loads_from_the_fixture_folder() -> None:
    validate = load_validator()
    assert Path(str(validate.__file__)) == SCHEMAS / "validate.py"
    assert validate.validate_frame(example_json("req_publish_text.json")) == []
    frame = example_json("req_publish_text.json")
    del frame["body"]["dialogId"]
    assert validate.validate_frame(frame) != []
    with pytest.raises(validate.NoSchema):
        validate.validate_frame(example_json("req_get_clock.json"))


def test_the_fixture_folder_is_data_not_tests() -> None:
    """pytest must not collect or import anything in tests/protocol/ by itself."""
    code = sorted(p.relative_to(PROTOCOL).as_posix() for p in PROTOCOL.rglob("*.py")
                  if "__pycache__" not in p.parts)
    assert code == ["schemas/validate.py"]
    assert not (PROTOCOL / "__init__.py").exists() and not (PROTOCOL / "conftest.py").exists()
