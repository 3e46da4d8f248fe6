"""The systemd unit and its environment example: valid for systemd, hardened, and consistent
with the settings and the README.

`systemd-analyze` checks run where the tool is installed and are skipped otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.config import CONFIG_ENV, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "recorder.service"
ENV_EXAMPLE = ROOT / "systemd" / "recorder.env.example"
README = ROOT / "README.md"
APP = ROOT / "recorder" / "app.py"

INSTALLED_RECORDER = "/opt/recorder/bin/recorder"
# credential id -> the variable that points recorder at the service's private copy
CREDENTIALS = {
    "consumer-jwt": "RECORDER_CONSUMER_JWT_FILE",
    "api-token": "RECORDER_API_TOKEN_FILE",
    "database-url": "RECORDER_DATABASE_URL_FILE",
}
KNOWN_VARIABLES = (
    {CONFIG_ENV}
    | {spec.env for spec in SETTINGS}
    | {spec.file_env for spec in SETTINGS if spec.file_env}
)

Directive = tuple[str, str, str]  # section, key, value


def parse_unit(text: str, *, commented: bool = False) -> list[Directive]:
    """`Key=value` lines in order, repeated keys kept. With `commented`, only the lines
    that are commented out (`#Key=value`), i.e. the ones an operator may switch on."""
    directives: list[Directive] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if commented:
            match = re.fullmatch(r"#([A-Z][A-Za-z]+)=(.*)", line)
            if match:
                directives.append((section, match[1], match[2].strip()))
            continue
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {raw!r}"
        directives.append((section, key.strip(), value.strip()))
    return directives


def values(directives: list[Directive], section: str, key: str) -> list[str]:
    return [v for s, k, v in directives if s == section and k == key]


def one(directives: list[Directive], section: str, key: str) -> str:
    found = values(directives, section, key)
    assert len(found) == 1, f"{section}.{key}: expected one value, found {found}"
    return found[0]


def environment(directives: list[Directive]) -> dict[str, str]:
    assignments = {}
    for value in values(directives, "Service", "Environment"):
        name, _, assigned = value.partition("=")
        assignments[name] = assigned
    return assignments


def seconds(value: str) -> float:
    """A systemd time span such as `30s`, `5min`, `180s` or `1min 30s`."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> list[Directive]:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def commented() -> list[Directive]:
    return parse_unit(UNIT.read_text(), commented=True)


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def installed_recorder() -> str:
    """The `recorder` of this environment, standing in for /opt/recorder/bin/recorder."""
    candidate = Path(sys.executable).parent / "recorder"
    found = str(candidate) if candidate.exists() else shutil.which("recorder")
    if found is None:
        pytest.skip("no `recorder` executable in this environment")
    return found


def copy_for_the_tools(directory: Path) -> Path:
    """The unit with its credential lines switched on and the command paths pointing at this
    environment's `recorder`: `systemd-analyze` checks that the commands exist."""
    text = UNIT.read_text().replace(INSTALLED_RECORDER, installed_recorder())
    text = re.sub(r"^#((?:LoadCredential|Environment)=)", r"\1", text, flags=re.MULTILINE)
    copy = directory / "recorder.service"
    copy.write_text(text)
    return copy


# -- (a) systemd accepts it ----------------------------------------------------------------------


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = systemd_analyze()
    copy = copy_for_the_tools(tmp_path)
    result = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "recorder.service" in line]
    # verify exits 0 for unknown keys and bad values too, and only warns: read its output
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_the_copy_differs_from_the_unit_only_in_paths_and_credential_lines(
    tmp_path: Path, unit: list[Directive], commented: list[Directive]
) -> None:
    copy = parse_unit(copy_for_the_tools(tmp_path).read_text())
    recorder = installed_recorder()
    expected = [(s, k, v.replace(INSTALLED_RECORDER, recorder)) for s, k, v in unit]
    credential_lines = [d for d in commented if d[1] in ("LoadCredential", "Environment")]
    assert sorted(copy) == sorted(expected + credential_lines)


# -- (b) what it says ----------------------------------------------------------------------------


def test_it_is_a_notify_service_with_a_watchdog(unit: list[Directive]) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert 10 <= seconds(one(unit, "Service", "WatchdogSec")) <= 120
    assert one(unit, "Service", "Restart") == "on-failure"
    assert 1 <= seconds(one(unit, "Service", "RestartSec")) <= 60
    # a configuration error is not retried; everything else is, without a start limit
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"
    assert "network-online.target" in values(unit, "Unit", "Wants")
    assert "network-online.target" in values(unit, "Unit", "After")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_it_migrates_then_runs_the_installed_recorder(unit: list[Directive]) -> None:
    # "-": a failed migration is reported by `recorder run`, whose exit code decides restarts
    assert one(unit, "Service", "ExecStartPre") == f"-{INSTALLED_RECORDER} migrate"
    assert one(unit, "Service", "ExecStart") == f"{INSTALLED_RECORDER} run"
    assert environment(unit)[CONFIG_ENV] == "/etc/recorder/recorder.toml"
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/recorder/recorder.env"


def test_the_stop_timeout_covers_every_drain_budget(unit: list[Directive]) -> None:
    """TimeoutStopSec is at least the sum of the daemon's drain budgets (one identity), so the
    daemon's own limits fire, and name the stuck part, before systemd's SIGKILL."""
    budgets = [float(n) for n in re.findall(r"drain_s=(\d+(?:\.\d+)?)", APP.read_text())]
    if len(budgets) < 3:
        pytest.skip("recorder/app.py no longer spells its drain budgets as drain_s=N")
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= sum(budgets)
    # roles in processes: the supervisor's budgets, one role after the other
    from recorder.role_processes import DRAIN_BUDGET_S

    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= sum(DRAIN_BUDGET_S.values())
    # SIGTERM to recorder only: it drains into the embedded PostgreSQL, then stops it
    assert one(unit, "Service", "KillMode") == "mixed"


def test_state_lives_in_the_state_directory_as_a_dynamic_user(unit: list[Directive]) -> None:
    assert one(unit, "Service", "DynamicUser") == "yes"
    assert one(unit, "Service", "StateDirectory") == "recorder"
    assert one(unit, "Service", "RuntimeDirectory") == "recorder"
    assert environment(unit)["XDG_RUNTIME_DIR"] == "%t/recorder"
    assert one(unit, "Service", "UMask") == "0077"
    assert "RECORDER_STATE_DIR" not in environment(unit), "the default is $STATE_DIRECTORY"


HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}


@pytest.mark.parametrize(("key", "expected"), sorted(HARDENING.items()))
def test_it_is_hardened(unit: list[Directive], key: str, expected: str) -> None:
    assert one(unit, "Service", key) == expected


def test_system_calls_are_filtered(unit: list[Directive]) -> None:
    filters = values(unit, "Service", "SystemCallFilter")
    assert filters[0] == "@system-service"
    assert one(unit, "Service", "SystemCallErrorNumber") == "EPERM"


def test_settings_that_break_the_embedded_postgresql_stay_off(unit: list[Directive]) -> None:
    # ExecStartPre and ExecStart would get separate user namespaces, and with
    # ProtectProc=invisible `recorder run` could not see the server `recorder migrate` started.
    assert values(unit, "Service", "PrivateUsers") in ([], ["no"])
    # hides /proc/stat, which psutil (pgserver's, unpinned) may read for process start times
    assert values(unit, "Service", "ProcSubset") in ([], ["all"])


def test_credentials_are_offered_in_pairs_and_none_is_on(
    unit: list[Directive], commented: list[Directive]
) -> None:
    # systemd 252 refuses to start the service when a LoadCredential= file is missing
    assert values(unit, "Service", "LoadCredential") == []
    assert not any(name.endswith("_FILE") for name in environment(unit))
    offered = values(commented, "Service", "LoadCredential")
    assert offered == [f"{cid}:/etc/recorder/credentials/{cid}" for cid in CREDENTIALS]
    pointers = environment([(s, k, v) for s, k, v in commented if k == "Environment"])
    assert pointers == {var: f"%d/{cid}" for cid, var in CREDENTIALS.items()}


def test_the_readme_drop_in_is_the_units_own_credential_pair() -> None:
    readme = README.read_text()
    for line in ("LoadCredential=consumer-jwt:/etc/recorder/credentials/consumer-jwt",
                 "Environment=RECORDER_CONSUMER_JWT_FILE=%d/consumer-jwt"):
        assert f"\n#{line}\n" in UNIT.read_text()
        assert re.search(rf"^\s*{re.escape(line)}$", readme, re.MULTILINE), line


# -- (c) the security score ----------------------------------------------------------------------


def readme_exposure() -> float:
    match = re.search(r"`systemd-analyze security recorder\.service` rates the unit "
                      r"\*\*(\d+\.\d+) [A-Z]+\*\*", README.read_text())
    assert match, "the README states the unit's exposure score"
    return float(match[1])


def test_the_security_exposure_is_no_worse_than_the_readme_says(tmp_path: Path) -> None:
    tool = systemd_analyze()
    copy = tmp_path / "recorder.service"
    copy.write_text(UNIT.read_text())
    result = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(copy)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for recorder\.service: (\d+\.\d+)",
                      result.stdout + result.stderr)
    if match is None and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline: {result.stderr}")
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= readme_exposure()
    assert readme_exposure() <= 2.0


# -- (d) only real settings ----------------------------------------------------------------------


def env_example_names() -> Iterator[str]:
    yield from re.findall(r"\bRECORDER_[A-Z_]+\b", ENV_EXAMPLE.read_text())


def test_the_env_example_names_only_real_settings() -> None:
    names = set(env_example_names())
    assert names <= KNOWN_VARIABLES, names - KNOWN_VARIABLES


def test_the_env_example_shows_every_non_secret_setting() -> None:
    shown = set(re.findall(r"^#(RECORDER_[A-Z_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    expected = {spec.env for spec in SETTINGS if not spec.secret} - {"RECORDER_CONSUMER_JWT_FILE"}
    assert shown == expected | {CONFIG_ENV}


def test_the_env_example_sets_nothing_and_holds_no_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    active = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert active == []
    secrets = {spec.env for spec in SETTINGS if spec.secret}
    assigned = set(re.findall(r"^#(RECORDER_[A-Z_]+)=", text, re.MULTILINE))
    assert not secrets & assigned


def test_every_variable_the_unit_sets_is_a_real_setting(
    unit: list[Directive], commented: list[Directive]
) -> None:
    names = set(environment(unit)) | set(environment(commented))
    recorder_names = {name for name in names if name.startswith("RECORDER_")}
    assert recorder_names
    assert recorder_names <= KNOWN_VARIABLES, recorder_names - KNOWN_VARIABLES


# -- one role per unit ---------------------------------------------------------------------------

ROLE_UNIT = UNIT.parent / "recorder-role@.service"


@pytest.mark.parametrize("role", ["ingest", "project", "serve"])
def test_systemd_analyze_verify_accepts_the_role_template(tmp_path: Path, role: str) -> None:
    tool = systemd_analyze()
    text = ROLE_UNIT.read_text().replace(INSTALLED_RECORDER, installed_recorder())
    copy = tmp_path / f"recorder-role@{role}.service"
    copy.write_text(text)
    result = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "recorder-role" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_the_role_template_runs_one_role_as_a_notify_service() -> None:
    role_unit = parse_unit(ROLE_UNIT.read_text())
    assert one(role_unit, "Service", "ExecStart").endswith("recorder run --role %i")
    assert one(role_unit, "Service", "Type") == "notify"
    assert one(role_unit, "Service", "RestartPreventExitStatus") == "2"
    from recorder.role_processes import DRAIN_BUDGET_S

    assert seconds(one(role_unit, "Service", "TimeoutStopSec")) >= max(DRAIN_BUDGET_S.values())
