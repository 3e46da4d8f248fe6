"""Where the tests find the protocol fixtures: `tests/protocol/`, inside the checkout.

- `tests/protocol/examples/`: one hand-composed websocket frame per `.json` file, indexed in
  `examples/INDEX.md` (the cast of ids, what each frame shows, the LivePerson sources it follows).
- `tests/protocol/schemas/`: LivePerson's published JSON schemas for the consumer side of the UMS
  protocol (unmodified copies from LivePersonInc/developer-center, folder `assets/schema/`) and
  our `validate.py`, which checks one frame against them (see `schemas/README.md`).

The suite needs nothing outside the checkout: a missing fixture is a failure, never a skip
(tests/test_standalone.py keeps it so).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

PROTOCOL = Path(__file__).resolve().parent / "protocol"
EXAMPLES = PROTOCOL / "examples"
SCHEMAS = PROTOCOL / "schemas"


def example_path(name: str) -> Path:
    """The example frame `name` (e.g. `notif_msg_backfill_batch.json`); it must exist."""
    path = EXAMPLES / name
    assert path.is_file(), f"example frame {name} missing from {EXAMPLES}"
    return path


def example_text(name: str) -> str:
    return example_path(name).read_text(encoding="utf-8")


def example_json(name: str) -> Any:
    return orjson.loads(example_path(name).read_bytes())


def example_names(prefix: str = "") -> list[str]:
    """The example frames' file names starting with `prefix`, sorted; never empty."""
    names = sorted(p.name for p in EXAMPLES.glob(f"{prefix}*.json"))
    assert names, f"no example frames {prefix}*.json in {EXAMPLES}"
    return names


@functools.cache
def load_validator() -> ModuleType:
    """`tests/protocol/schemas/validate.py` as a module (validate_frame, NoSchema), loaded once."""
    path = SCHEMAS / "validate.py"
    spec = importlib.util.spec_from_file_location("validate", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
