"""The read API (design.md section 5): `create_app`, `listen`, `make_runner`,
`check_listen_allowed`, `probe_listen`."""

from recorder.api.app import create_app
from recorder.api.auth import check_listen_allowed
from recorder.api.listener import listen, make_runner, probe_listen

__all__ = ["check_listen_allowed", "create_app", "listen", "make_runner", "probe_listen"]
