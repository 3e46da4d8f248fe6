#!/usr/bin/env python3
"""Validate consumer UMS (Messaging Window API) websocket frames against
LivePerson's published JSON schemas kept in this folder.

    python validate.py FRAME.json [FRAME.json ...]   # one frame per file
    python validate.py -                             # one JSON frame per line on stdin

Prints one line per frame: "OK <name>", "FAIL <name>: <errors>" or
"NOSCHEMA <name>: <why>". Exits 1 if any frame FAILs (NOSCHEMA does not fail).

As a module:  validate_frame(frame) -> list[str]  (empty list = valid).
If no schema applies to the frame it raises NoSchema (a LookupError) whose
str() is the reason.

Dispatch: kind "req" / "resp" / "notification" selects ws/consumerRequests.json /
ws/consumerResponses.json / ws/consumerNotifications.json. Each of those is an
"anyOf" whose branches pin the frame "type" - by "enum" (requests,
notifications) or only by "default" (responses). The frame is validated
against the single branch naming its type, via a JSON-pointer $ref
("ws/consumerResponses.json#/anyOf/3"), so the branch's relative $refs resolve
as in the published file. A frame without "kind" but with "id" is treated as
a request (infra/req.json does not require "kind").

Schemas are draft-04; $refs are plain relative file paths (no ids, no
fragments) and are resolved inside this folder only - nothing is fetched.
Workarounds for mistakes in the published files (files are NOT edited) are
marked "WORKAROUND" below and listed in README.md.
"""
import json
import posixpath
import sys
from pathlib import Path

from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match
from jsonschema.validators import extend
from referencing import Registry
from referencing.jsonschema import DRAFT4

HERE = Path(__file__).resolve().parent
BASE = "https://schemas.invalid/assets/schema/"  # never fetched; only a base for relative $refs

ENTRY = {
    "req": "ws/consumerRequests.json",
    "resp": "ws/consumerResponses.json",
    "notification": "ws/consumerNotifications.json",
}

# WORKAROUND 1: two published files use type names that are not draft-04 types.
#   ms/HostedFile.json  message.preview  {"type": "any"}   (a draft-03 leftover)
#   aam/subscribeExConversationsNotification.json  metaDataLastUpdateTs  {"type": "Long"}
_base_types = Draft4Validator.TYPE_CHECKER
_TYPES = _base_types.redefine_many({
    "any": lambda checker, instance: True,
    "Long": lambda checker, instance: _base_types.is_type(instance, "integer"),
})
Validator = extend(Draft4Validator, type_checker=_TYPES)

# WORKAROUND 2: consumer requests with published schemas that ws/consumerRequests.json
# does not list. Whole-frame schemas (type named by their "default"):
EXTRA_FRAME_SCHEMAS = ["infra/keepAlive.json", "ms/queryMessages.json"]
# ... and body-only schemas, wrapped here as infra/req.json + body (type names from the
# Messaging Window API reference pages "Generate Upload/Download URL"):
EXTRA_REQUEST_BODIES = {
    "ms.GenerateURLForUploadFile": "ms/GenerateURLForUploadFileBody.json",
    "ms.GenerateURLForDownloadFile": "ms/GenerateURLForDownloadFileBody.json",
}

# WORKAROUND 3: ws/consumerResponses.json names response types only through "default"
# values; the Messaging Window API tutorial "Post Conversation Survey (PCS)" shows the
# server using other spellings for two of them. Map those spellings onto the branch:
RESPONSE_TYPE_ALIASES = {
    "StringResponse": ".ReqBody$StringResp",                        # step 9 OK response
    ".ams.GenericSubscribeResponse": "GenericSubscribeResponse",    # step 7 response
}


class NoSchema(LookupError):
    """No published schema applies to this frame (str() gives the reason)."""


def _load(rel):
    return json.loads((HERE / rel).read_text(encoding="utf-8"))


def _registry():
    return Registry().with_resources(
        (BASE + p.relative_to(HERE).as_posix(),
         DRAFT4.create_resource(json.loads(p.read_text(encoding="utf-8"))))
        for p in HERE.rglob("*.json")
    )


def _type_names(schema, rel):
    """Frame 'type' strings a schema names: properties.type.enum, else .default;
    looks through allOf members and follows $refs to other files."""
    if "$ref" in schema:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), schema["$ref"]))
        return _type_names(_load(target), target)
    t = schema.get("properties", {}).get("type", {})
    names = set(t.get("enum") or ([t["default"]] if "default" in t else []))
    for sub in schema.get("allOf", []):
        names |= _type_names(sub, rel)
    return names


def _dispatch_table():
    table = {}  # (kind, type) -> schema to validate the whole frame with
    for kind, rel in ENTRY.items():
        for i, branch in enumerate(_load(rel)["anyOf"]):
            for name in _type_names(branch, rel):
                table[(kind, name)] = {"$ref": f"{BASE}{rel}#/anyOf/{i}"}
    for rel in EXTRA_FRAME_SCHEMAS:
        for name in _type_names(_load(rel), rel):
            table.setdefault(("req", name), {"$ref": BASE + rel})
    for alias, name in RESPONSE_TYPE_ALIASES.items():
        table.setdefault(("resp", alias), table[("resp", name)])
    for name, rel in EXTRA_REQUEST_BODIES.items():
        table.setdefault(("req", name), {"allOf": [
            {"$ref": BASE + "infra/req.json"},
            {"properties": {"body": {"$ref": BASE + rel}}, "required": ["body"]},
        ]})
    return table


REGISTRY = _registry()
DISPATCH = _dispatch_table()


def _short(err):
    where = err.json_path
    if err.validator in ("oneOf", "anyOf") and err.context:
        titles = [s.get("title") or s.get("$ref", "?") for s in err.validator_value]
        msg = f"matches none of {err.validator} {titles}"
        if isinstance(err.instance, dict) and "type" in err.instance:
            msg += f" (its type is {err.instance['type']!r})"
    elif err.validator == "type":
        msg = f"is {type(err.instance).__name__}, schema wants type {err.validator_value!r}"
    else:
        msg = err.message
    return f"{where}: {msg if len(msg) <= 160 else msg[:157] + '...'}"


def validate_frame(frame):
    """Return a list of short error strings (empty = valid); raise NoSchema if none applies."""
    if not isinstance(frame, dict):
        raise NoSchema("frame is not a JSON object")
    kind = frame.get("kind") or ("req" if "id" in frame else None)
    if kind not in ENTRY:
        raise NoSchema(f"kind {frame.get('kind')!r} is not req/resp/notification")
    ftype = frame.get("type")
    schema = DISPATCH.get((kind, ftype))
    if schema is None:
        raise NoSchema(f"no {kind} schema names type {ftype!r} ({ENTRY[kind]} and extras)")
    validator = Validator(schema, registry=REGISTRY, format_checker=Draft4Validator.FORMAT_CHECKER)
    out = []
    for err in validator.iter_errors(frame):
        line = _short(best_match([err]))
        if line not in out:
            out.append(line)
    return out


def _frames(args):
    for arg in args:
        if arg == "-":
            for n, line in enumerate(sys.stdin, 1):
                if line.strip():
                    yield f"<stdin>:{n}", line
        else:
            yield arg, Path(arg).read_text(encoding="utf-8")


def main(argv):
    if not argv:
        print(__doc__.split("\n\n")[1])
        return 2
    failed = False
    for name, text in _frames(argv):
        try:
            errors = validate_frame(json.loads(text))
        except json.JSONDecodeError as e:
            errors = [f"not JSON: {e}"]
        except NoSchema as e:
            print(f"NOSCHEMA {name}: {e}")
            continue
        if errors:
            failed = True
            more = f"; (+{len(errors) - 3} more)" if len(errors) > 3 else ""
            print(f"FAIL {name}: " + "; ".join(errors[:3]) + more)
        else:
            print(f"OK {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
