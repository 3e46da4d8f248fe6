"""The demo prints follow-up commands as they will work from the user's shell."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from recorder.demo import command_as_invoked


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_a_venv_script_not_on_path_is_named_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = executable(tmp_path / ".venv" / "bin" / "recorder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    # Before: the demo said `recorder status`, which is "command not found" here.
    assert command_as_invoked(str(script)) == ".venv/bin/recorder"
    assert command_as_invoked(".venv/bin/recorder") == ".venv/bin/recorder"


def test_the_script_that_path_finds_is_just_recorder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = executable(tmp_path / "bin" / "recorder")
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}/usr/bin")
    assert command_as_invoked(str(script)) == "recorder"


def test_another_recorder_first_on_path_is_not_taken_for_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = executable(tmp_path / "other" / "recorder")
    ours = executable(tmp_path / "ours" / "recorder")
    monkeypatch.setenv("PATH", str(other.parent))
    monkeypatch.chdir(tmp_path / "other")
    assert command_as_invoked(str(ours)) == str(ours)


def test_python_dash_m_is_named_with_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    main = Path(__file__).resolve().parents[1] / "recorder" / "__main__.py"
    command = command_as_invoked(str(main))
    assert command.endswith(" -m recorder")
    assert Path(command.removesuffix(" -m recorder")).resolve() == Path(sys.executable).resolve()


def test_paths_with_spaces_are_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = executable(tmp_path / "my venv" / "bin" / "recorder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin")
    assert command_as_invoked(str(script)) == "'my venv/bin/recorder'"
