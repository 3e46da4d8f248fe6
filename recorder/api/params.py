"""Request parameters as typed, declarative models: one declaration validates and documents.

A model is a frozen dataclass whose fields carry a `Spec` (where the value comes from, its
`Kind`, a description). `parse(Model, request)` builds an instance or raises a 400 problem;
`openapi_parameters(Model)` yields the OpenAPI parameter objects of the same fields, so the
document at /openapi.json cannot drift from what the handlers accept.

Rules: unknown query parameters and repeated ones are refused (400), so a typo never silently
widens a filter. Text is at most 100 characters, valid UTF-8, without NUL. Timestamps are
ISO 8601; one without an offset is taken as UTC. `limit` defaults to 100; above 1000 is a 400
(not clamped: a client asking for more should learn it gets less).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

import orjson
from aiohttp import web

from recorder.api.problems import bad_request

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT = 100  # with the other limits, a valid request line stays under aiohttp's 8 KiB
MAX_CURSOR = 1024
INT64_MAX = 2**63 - 1
Location = Literal["query", "path", "header"]
M = TypeVar("M")


class Kind(Protocol):
    def parse(self, raw: str, name: str) -> Any: ...
    def schema(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Text:
    max_length: int = MAX_TEXT

    def parse(self, raw: str, name: str) -> str:
        if not raw:
            raise bad_request(f"{name} must not be empty", name)
        if len(raw) > self.max_length:
            raise bad_request(f"{name} is longer than {self.max_length} characters", name)
        if "\x00" in raw:
            raise bad_request(f"{name} contains a NUL character", name)
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"{name} is not valid UTF-8", name) from None
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length}


@dataclasses.dataclass(frozen=True)
class Integer:
    minimum: int = 0
    maximum: int = INT64_MAX

    def parse(self, raw: str, name: str) -> int:
        text = raw.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 20:
            raise bad_request(f"{name} must be an integer", name)
        value = int(text)
        if not self.minimum <= value <= self.maximum:
            raise bad_request(f"{name} must be between {self.minimum} and {self.maximum}", name)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


def parse_timestamp(raw: str, name: str) -> datetime:
    if len(raw) > 40:
        raise bad_request(f"{name} must be an ISO 8601 timestamp", name)
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 timestamp", name) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise bad_request(f"{name} is out of range", name) from None


@dataclasses.dataclass(frozen=True)
class Timestamp:
    def parse(self, raw: str, name: str) -> datetime:
        return parse_timestamp(raw, name)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time", "maxLength": 40}


@dataclasses.dataclass(frozen=True)
class TimeRange:
    """`from,to`: two ISO 8601 timestamps, the range half-open [from, to)."""

    def parse(self, raw: str, name: str) -> tuple[datetime, datetime]:
        if len(raw) > 80:
            raise bad_request(f"{name} is too long", name)
        parts = raw.split(",")
        if len(parts) != 2:
            raise bad_request(f"{name} must be two ISO 8601 timestamps: from,to", name)
        start, end = (parse_timestamp(part, name) for part in parts)
        if end < start:
            raise bad_request(f"{name}: the end is before the start", name)
        return start, end

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[^,]+,[^,]+$", "maxLength": 80, "example":
                "2024-01-01T00:00:00Z,2024-02-01T00:00:00Z"}


@dataclasses.dataclass(frozen=True)
class Cursor:
    """An opaque keyset cursor: base64url (unpadded) of a JSON array of typed parts."""

    parts: tuple[type, ...]

    def parse(self, raw: str, name: str) -> tuple[Any, ...]:
        if len(raw) > MAX_CURSOR:
            raise bad_request(f"{name} is not a cursor this API issued", name)
        try:
            value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            raise bad_request(f"{name} is not a cursor this API issued", name) from None
        if not (
            isinstance(value, list)
            and len(value) == len(self.parts)
            and all(type(v) is t for v, t in zip(value, self.parts, strict=True))
            and all(-INT64_MAX <= v <= INT64_MAX for v in value if isinstance(v, int))
            and all(Text(MAX_CURSOR).parse(v, name) for v in value if isinstance(v, str))
        ):
            raise bad_request(f"{name} is not a cursor this API issued", name)
        return tuple(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR,
                "pattern": "^[A-Za-z0-9_-]+$"}


def encode_cursor(*parts: str | int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).rstrip(b"=").decode("ascii")


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: Kind
    description: str
    location: Location = "query"
    name: str | None = None  # the wire name, when it differs from the field name
    required: bool = False


def param(kind: Kind, description: str, default: Any = None, *, location: Location = "query",
          name: str | None = None) -> Any:
    spec = Spec(kind, description, location, name, required=location == "path")
    return dataclasses.field(default=default, metadata={"spec": spec})


def _specs(model: type[Any]) -> list[tuple[dataclasses.Field[Any], Spec, str]]:
    found = []
    for f in dataclasses.fields(model):
        spec = f.metadata["spec"]
        found.append((f, spec, spec.name or f.name))
    return found


def parse(model: type[M], request: web.Request) -> M:
    """An instance of `model` from the request, or a 400 problem naming the parameter."""
    specs = _specs(model)
    known = {wire for _, spec, wire in specs if spec.location == "query"}
    for key in request.query:
        if key not in known:
            raise bad_request(f"unknown query parameter {key[:64]!r}", key[:64])
    values: dict[str, Any] = {}
    for f, spec, wire in specs:
        raw: str | None
        if spec.location == "query":
            found = request.query.getall(wire, [])
            if len(found) > 1:
                raise bad_request(f"{wire} given more than once", wire)
            raw = found[0] if found else None
        elif spec.location == "path":
            raw = request.match_info.get(wire)
        else:
            raw = request.headers.get(wire)
        if raw is None or (raw == "" and spec.location == "header"):
            continue
        values[f.name] = spec.kind.parse(raw, wire)
    return model(**values)


def openapi_parameters(model: type[Any] | None) -> list[dict[str, Any]]:
    if model is None:
        return []
    parameters = []
    for f, spec, wire in _specs(model):
        schema = spec.kind.schema()
        if f.default is not None and f.default is not dataclasses.MISSING:
            schema = {**schema, "default": f.default}
        parameters.append({
            "name": wire, "in": spec.location, "required": spec.required,
            "description": spec.description, "schema": schema,
        })
    return parameters
