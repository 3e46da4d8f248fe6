"""Docs kept honest: every setting and command documented; CI runs the README's tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recorder.cli import build_parser
from recorder.config import CONFIG_ENV, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def settings_rows() -> dict[str, tuple[str, str, str]]:
    """variable -> (meaning, allowed, default), from the README's settings table."""
    block = README.split("<!-- settings-table", 1)[1].split("<!-- /settings-table -->", 1)[0]
    rows = re.findall(
        r"^\| `(RECORDER_[A-Z_]+)` \| (.+?) \| (.+?) \| (.+?) \|$", block, re.MULTILINE
    )
    return {name: (meaning, allowed, default) for name, meaning, allowed, default in rows}


def settings_table() -> dict[str, str]:
    return {name: default for name, (_m, _a, default) in settings_rows().items()}


def test_every_setting_is_in_the_readme_table_and_nothing_else() -> None:
    documented = settings_table()
    expected = {CONFIG_ENV} | {s.env for s in SETTINGS}
    expected |= {s.file_env for s in SETTINGS if s.file_env}
    assert set(documented) == expected


def test_readme_defaults_match_the_settings_model() -> None:
    documented = settings_table()
    for spec in SETTINGS:
        assert documented[spec.env] == spec.default_text, spec.env


def test_readme_shows_what_each_setting_allows() -> None:
    rows = settings_rows()
    for spec in SETTINGS:
        meaning, allowed, _default = rows[spec.env]
        assert (meaning, allowed) == (spec.description, spec.allowed), spec.env


def test_every_command_is_documented() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands
    for name in commands:
        assert f"`recorder {name}" in README, name


def test_readme_opens_with_the_install_and_test_commands_that_ci_runs() -> None:
    blocks = re.findall(r"```sh\n(.+?)\n```", README, re.DOTALL)
    run_command, test_command = blocks[0], blocks[1]
    assert "pip install -e ." in run_command and "recorder" in run_command
    assert test_command.endswith(".venv/bin/pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install -q -e '.[dev]'" in ci
    assert "\n.venv/bin/pytest " in ci


def test_every_command_option_has_an_environment_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, subparser in commands.items():
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                env = f"RECORDER_{name.upper().replace('-', '_')}_{action.dest.upper()}"
                assert f"[env: {env}]" in (action.help or ""), env
    for action in parser._actions:  # global options mirror the settings
        if action.option_strings and action.dest not in ("help", "version"):
            assert "[env: RECORDER_" in (action.help or ""), action.dest
    monkeypatch.setenv("RECORDER_SIMULATE_SEED", "42")
    monkeypatch.setenv("RECORDER_SIMULATE_NO_CLOCK", "true")
    args = build_parser().parse_args(["simulate"])
    assert (args.seed, args.no_clock) == (42, True)
    args = build_parser().parse_args(["simulate", "--seed", "7"])
    assert args.seed == 7, "the flag wins over the environment"


def test_every_export_setting_is_documented() -> None:
    from recorder.exports.jobs import KEYS

    block = README.split("<!-- exports-table", 1)[1].split("<!-- /exports-table -->", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", block, re.MULTILINE))
    assert documented == KEYS
