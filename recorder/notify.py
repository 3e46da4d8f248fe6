"""sd_notify(3) without a dependency: one datagram per message to `$NOTIFY_SOCKET`.

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. The variables are removed from
the environment once read, so child processes (the embedded PostgreSQL) cannot speak for us.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

from recorder.logs import event

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        pid = env.pop("WATCHDOG_PID", "")
        self._address: str | bytes | None = None
        self._socket: socket.socket | None = None
        if path:
            # A leading '@' names a socket in the abstract namespace.
            self._address = "\0" + path[1:] if path.startswith("@") else path
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        #: seconds between WATCHDOG=1 pings (half of WatchdogSec); None: no watchdog
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; False if not under systemd or it failed."""
        if self._socket is None or self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:  # once: a vanished socket would otherwise log every ping
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc,
                            extra=event("systemd.notify.failed"))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping: draining the queue, committing") -> bool:
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
