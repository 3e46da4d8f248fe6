"""The embedded server's list of users: processes that died without releasing it are dropped,
so the last live process still stops the server (after kill -9, a watchdog abort, an OOM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recorder.db.embedded import forget_dead_handles


def test_dead_processes_are_forgotten_and_live_ones_kept(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    handles = tmp_path / ".handle_pids.json"
    handles.write_text(json.dumps([os.getpid(), dead, 1]))
    assert forget_dead_handles(handles) == [dead]
    assert json.loads(handles.read_text()) == [os.getpid(), 1]
    assert forget_dead_handles(handles) == []  # nothing more to drop; the file is left alone


def test_a_missing_or_garbled_list_is_left_alone(tmp_path: Path) -> None:
    assert forget_dead_handles(tmp_path / "missing.json") == []
    garbled = tmp_path / ".handle_pids.json"
    garbled.write_text("{not json")
    assert forget_dead_handles(garbled) == []
    assert garbled.read_text() == "{not json"
