"""The Prometheus alert rules and the Grafana dashboard in docs/ use only metrics (and labels)
that recorder/metrics.py defines, in the form Prometheus stores them, and are well-formed.

`promtool` checks (syntax, the dashboard's PromQL, the rules' unit tests) run where it is
installed (Debian package `prometheus`; .ci/run installs it) and are skipped otherwise.
PyYAML is not a dependency of the project, so the rule file is read by a small parser of the
subset of YAML it uses (block mappings, block scalars); promtool checks the real YAML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import values

from recorder.metrics import MULTIPROCESS_ENV, Metrics, RoleMetrics

ROOT = Path(__file__).resolve().parent.parent
METRICS_PY = ROOT / "recorder" / "metrics.py"
RULES = ROOT / "docs" / "prometheus" / "recorder-alerts.yml"
RULES_TEST = ROOT / "docs" / "prometheus" / "recorder-alerts.test.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "recorder-dashboard.json"

REQUIRED_ALERTS = {
    "RecorderNoIdentityRecording", "RecorderIdentityDown", "RecorderProjectionLagging",
    "RecorderNoProjector", "RecorderTwoProjectors", "RecorderLeaseFlapping",
    "RecorderQuarantineGrowing", "RecorderReconnectStorm", "RecorderRoleRestarting",
    "RecorderRoleDown", "RecorderCommitLatencyHigh", "RecorderExportStale",
    "RecorderExportFailing",
}
SEVERITIES = {"critical", "warning", "info"}
#: What the dashboard must show (base names; the panels operators asked for).
DASHBOARD_METRICS = {
    "recorder_events_stored", "recorder_duplicates_dropped", "recorder_commit_latency_seconds",
    "recorder_projection_lag_seconds", "recorder_projection_lag_events",
    "recorder_identity_connected", "recorder_leases_held", "recorder_lease_takeovers",
    "recorder_instances_live", "recorder_reconnects", "recorder_rate_limited",
    "recorder_frames_quarantined", "recorder_role_up", "recorder_role_restarts",
    "recorder_identity_followed_dialogs", "recorder_export_rows",
    "recorder_last_export_timestamp_seconds",
}
#: Suffixes prometheus_client adds to a family's samples, by type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
#: Labels every scraped series has; `le` on histogram buckets.
TARGET_LABELS = {"instance", "job"}
#: A metric label Prometheus renames on ingest (it clashes with a target label).
RENAMED = {"job": "exported_job"}

METRIC_TOKEN = re.compile(r"\brecorder_[a-z_]+")
SELECTOR = re.compile(r"\b(recorder_[a-z_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
DURATION = re.compile(r"^\d+[smhdwy]$")


# -- what recorder/metrics.py defines -----------------------------------------------------------


def defined_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Base name -> (type, label names), read from the text of recorder/metrics.py."""
    text = METRICS_PY.read_text()
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for match in re.finditer(r"\b(Counter|Gauge|Histogram)\(\s*\"(recorder_[a-z_]+)\"", text):
        kind, name = match.group(1).lower(), match.group(2)
        arguments = text[match.end():text.index("registry=", match.end())]
        labels = re.search(r"\[([^\]]*)\]", arguments)
        names = re.findall(r"\"(\w+)\"", labels.group(1)) if labels else []
        found[name] = (kind, frozenset(names))
    return found


def exposed_names(defined: dict[str, tuple[str, frozenset[str]]]) -> dict[str, str]:
    """Sample name as Prometheus stores it -> its family's base name."""
    return {base + suffix: base
            for base, (kind, _labels) in defined.items() for suffix in SUFFIXES[kind]}


def strip_suffix(token: str) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
        if token.endswith(suffix):
            return token.removesuffix(suffix)
    return token


# -- the rule file, read without PyYAML ---------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _meaningful(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _scalar(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_mapping(lines: list[str], indent: int) -> dict[str, str]:
    """A block mapping of scalars, block scalars and nested mappings, flattened to dotted
    keys: `labels.severity`."""
    result: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not _meaningful(line):
            i += 1
            continue
        match = re.match(rf"^ {{{indent}}}([A-Za-z_][\w-]*):(?: +(.*))?$", line)
        assert match, f"unexpected line in {RULES.name}: {line!r}"
        key, value = match.group(1), (match.group(2) or "").strip()
        assert key not in result, f"duplicate key {key!r} in {RULES.name}"
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
            j += 1
        children = lines[i + 1:j]
        if value in ("|", "|-", "|+", ">", ">-", ">+"):
            result[key] = "\n".join(c.strip() for c in children if c.strip())
        elif value == "":
            nested = [c for c in children if _meaningful(c)]
            assert nested, f"{key!r} has no value in {RULES.name}"
            for child, child_value in parse_mapping(children, _indent(nested[0])).items():
                result[f"{key}.{child}"] = child_value
        else:
            assert not [c for c in children if _meaningful(c)], f"{key!r}: multi-line plain value"
            result[key] = _scalar(value)
        i = j
    return result


def alert_rules() -> dict[str, dict[str, str]]:
    """Alert name -> its flattened keys (`expr`, `for`, `labels.severity`, ...)."""
    lines = RULES.read_text().splitlines()
    alerts: dict[str, dict[str, str]] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^( *)- alert: *(\S+) *$", line)
        if not match:
            continue
        dash, name = len(match.group(1)), match.group(2)
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > dash):
            j += 1
        assert name not in alerts, f"alert {name} defined twice"
        alerts[name] = parse_mapping(lines[i + 1:j], dash + 2)
    return alerts


# -- the dashboard ------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows nest theirs


def dashboard_queries() -> dict[str, str]:
    """`panel <id> <refId>` -> PromQL expression, for every target of every panel."""
    queries: dict[str, str] = {}
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            queries[f"panel {panel['id']} {target['refId']}"] = target["expr"]
    return queries


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for promtool."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h").replace("$instance", ".*")
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# -- promtool -----------------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


# -- tests: metric names ------------------------------------------------------------------------


def test_the_metrics_read_from_metrics_py_are_the_ones_the_registries_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text parse is checked against the real registries, so it cannot drift."""
    # in-process values, whatever multiprocess directory an earlier test may have set
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    monkeypatch.setattr(values, "ValueClass", values.get_value_class())  # type: ignore[no-untyped-call]
    live: dict[str, str] = {}
    for registry in (Metrics().registry, RoleMetrics().registry):
        for family in registry.collect():
            live[family.name] = family.type
    defined = defined_metrics()
    assert {name: kind for name, (kind, _labels) in defined.items()} == live
    assert defined["recorder_events_stored"][1] == {"kind"}
    assert defined["recorder_export_rows"][1] == {"job"}
    assert defined["recorder_frames_quarantined"][1] == frozenset()


@pytest.mark.parametrize("path", [RULES, RULES_TEST, DASHBOARD], ids=lambda p: p.name)
def test_every_metric_named_in_the_docs_is_defined(path: Path) -> None:
    defined = defined_metrics()
    exposed = exposed_names(defined)
    tokens = set(METRIC_TOKEN.findall(path.read_text()))
    assert tokens, f"{path.name} names no recorder metric"
    undefined = sorted(t for t in tokens if strip_suffix(t) not in defined)
    assert not undefined, f"{path.name}: recorder/metrics.py defines no {undefined}"
    # ...and in the form Prometheus stores: counters with _total, histograms with _bucket etc.
    misnamed = sorted(t for t in tokens if t not in exposed)
    assert not misnamed, f"{path.name}: no such series (a counter needs _total): {misnamed}"


def test_the_dashboard_shows_the_core_metrics() -> None:
    used = {strip_suffix(t) for t in METRIC_TOKEN.findall(DASHBOARD.read_text())}
    assert not DASHBOARD_METRICS - set(defined_metrics())
    assert not DASHBOARD_METRICS - used, "metrics without a panel"


def all_expressions() -> dict[str, str]:
    expressions = {f"alert {name}": rule["expr"] for name, rule in alert_rules().items()}
    expressions.update(dashboard_queries())
    return expressions


def test_expressions_only_use_labels_the_metrics_have() -> None:
    defined = defined_metrics()

    def stored(labels: frozenset[str]) -> set[str]:
        return {RENAMED.get(label, label) for label in labels}

    for where, expr in all_expressions().items():
        # (names recorder/metrics.py lacks fail test_every_metric_named_in_the_docs_is_defined)
        metrics = {strip_suffix(t) for t in METRIC_TOKEN.findall(expr)} & defined.keys()
        for name, matchers in SELECTOR.findall(expr):
            if strip_suffix(name) not in defined:
                continue
            allowed = stored(defined[strip_suffix(name)][1]) | TARGET_LABELS
            used = set(MATCHER_LABEL.findall(matchers))
            assert used <= allowed, f"{where}: {name} has no label {used - allowed}"
        allowed = set(TARGET_LABELS)
        for name in metrics:
            allowed |= stored(defined[name][1])
            if defined[name][0] == "histogram":
                allowed.add("le")
        for grouping in GROUPING.findall(expr):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= allowed, f"{where}: no metric here has {labels - allowed}"
            if any(defined[name][1] & RENAMED.keys() for name in metrics):
                # the export job's name is `exported_job` once scraped; `job` is the target's
                assert not labels & RENAMED.keys(), f"{where}: group by exported_job"


# -- tests: the rules ---------------------------------------------------------------------------


def test_every_alert_has_an_expression_a_duration_a_severity_and_text() -> None:
    alerts = alert_rules()
    assert not REQUIRED_ALERTS - set(alerts), "alerts missing"
    assert RULES.read_text().count("- alert:") == len(alerts)
    for name, rule in alerts.items():
        assert re.fullmatch(r"Recorder[A-Z][A-Za-z]+", name), name
        assert rule.get("expr", "").strip(), name
        assert DURATION.match(rule.get("for", "")), f"{name}: for: {rule.get('for')!r}"
        assert rule.get("labels.severity") in SEVERITIES, name
        assert rule.get("annotations.summary", "").strip(), name
        assert len(rule.get("annotations.description", "")) > 40, name
        extra = {key for key in rule
                 if key not in ("expr", "for") and not key.startswith(("labels.", "annotations."))}
        assert not extra, f"{name}: unexpected keys {extra}"


def test_the_rules_say_what_they_alert_on() -> None:
    alerts = alert_rules()
    assert "sum(recorder_identity_connected) == 0" in alerts["RecorderNoIdentityRecording"]["expr"]
    assert "max by (identity) (recorder_identity_connected) == 0" in (
        alerts["RecorderIdentityDown"]["expr"])
    assert 'recorder_leases_held{kind="projector"}' in alerts["RecorderNoProjector"]["expr"]
    assert 'kind="projector"' in alerts["RecorderProjectionLagging"]["expr"]
    assert "histogram_quantile(0.99" in alerts["RecorderCommitLatencyHigh"]["expr"]
    assert "recorder_commit_latency_seconds_bucket" in alerts["RecorderCommitLatencyHigh"]["expr"]
    for name, rule in alerts.items():  # a counter's value means nothing: rate, increase, count
        for token in re.findall(r"\brecorder_[a-z_]+_total\b", rule["expr"]):
            assert re.search(rf"(?:rate|increase|count)\({token}\b", rule["expr"]), (name, token)


def test_the_unit_tests_exercise_existing_alerts() -> None:
    """promtool passes a test of a misspelt alert name that expects nothing."""
    tested = set(re.findall(r"alertname: *(\S+)", RULES_TEST.read_text()))
    assert {"RecorderNoProjector", "RecorderQuarantineGrowing"} <= tested
    assert tested <= set(alert_rules()), "tests of alerts that do not exist"
    assert re.search(r"rule_files:\s*\n\s*- recorder-alerts\.yml\b", RULES_TEST.read_text())


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout + result.stderr)
    assert found and int(found.group(1)) == len(alert_rules()), result.stdout


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(RULES_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- tests: the dashboard -----------------------------------------------------------------------


def test_the_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] == "recorder" and board["title"] == "recorder"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    inputs = {i["name"]: i for i in board["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        assert panel["type"] in {"row", "timeseries", "stat"}, panel["type"]
        assert panel.get("title"), panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert re.fullmatch(r"label_values\(recorder_[a-z_]+, *\w+\)", variable["definition"])


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in all_panels(dashboard()["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    """Each query, Grafana variables filled in, as a recording rule: promtool parses it."""
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for where, expr in dashboard_queries().items():
        record = "dashboard:" + where.replace(" ", "_")
        rules += [f"      - record: {record}", f"        expr: {json.dumps(as_promql(expr))}"]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text("\n".join(rules) + "\n")
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
