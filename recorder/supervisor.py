"""Named components under one stop event, with a bounded, ordered drain.

Components start in order and stop in reverse: the sockets close first, then the writer
flushes what they queued, then the projector catches up. A component that ends on its own
(a crash, or a clean return nobody asked for) stops the whole process, so systemd can
restart it: nothing fails silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Component:
    name: str
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    #: how long it may take to finish after being asked to stop
    drain_s: float = 15.0
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self) -> None:
        self.components: list[Component] = []
        self.failed: list[str] = []

    def add(self, name: str, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
            drain_s: float = 15.0) -> Component:
        component = Component(name, run, drain_s)
        self.components.append(component)
        return component

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set or a component ends; 0 if everything stopped cleanly."""
        for component in self.components:
            component.task = asyncio.create_task(component.run(component.stop), name=component.name)
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        tasks = {c.task for c in self.components if c.task is not None}
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for component in self.components:
            if component.task in done and not stop.is_set():
                self._record_end(component)
        stopper.cancel()
        await self._drain()
        return 1 if self.failed else 0

    def _record_end(self, component: Component) -> None:
        task = component.task
        assert task is not None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("%s failed: %r; stopping", component.name, error, exc_info=error)
        else:
            log.error("%s ended unexpectedly; stopping", component.name)
        self.failed.append(component.name)

    async def _drain(self) -> None:
        for component in reversed(self.components):
            task = component.task
            if task is None:
                continue
            component.stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), component.drain_s)
            except TimeoutError:
                log.error("%s did not stop within %.0fs; cancelled", component.name,
                          component.drain_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self.failed.append(component.name)
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                if component.name not in self.failed:
                    log.error("%s failed while stopping: %r", component.name, exc)
                    self.failed.append(component.name)
