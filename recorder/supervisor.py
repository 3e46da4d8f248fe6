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

from recorder.logs import event

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Component:
    name: str
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    #: how long it may take to finish after being asked to stop
    drain_s: float = 15.0
    #: consecutive components of one group (the identities) drain together, not in turn
    group: str | None = None
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self) -> None:
        self.components: list[Component] = []
        self.failed: list[str] = []
        #: set by `hurry()`: cancel what is still draining instead of waiting for it
        self._hurry = asyncio.Event()
        self.hurried = False

    def hurry(self) -> None:
        """Stop now: cancel every component still running. Nothing committed is lost, and
        nothing uncommitted either: cursors only advance after a commit, so UMS resends it."""
        self.hurried = True
        self._hurry.set()

    def add(self, name: str, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
            drain_s: float = 15.0, group: str | None = None) -> Component:
        component = Component(name, run, drain_s, group)
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
        return 1 if self.failed or self.hurried else 0

    def _record_end(self, component: Component) -> None:
        task = component.task
        assert task is not None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("%s failed: %r; stopping", component.name, error, exc_info=error,
                      extra=event("supervisor.component.failed"))
        else:
            log.error("%s ended unexpectedly; stopping", component.name,
                      extra=event("supervisor.component.ended"))
        self.failed.append(component.name)

    async def _drain(self) -> None:
        batches: list[list[Component]] = []
        for component in reversed(self.components):
            if component.task is None:
                continue
            last = batches[-1][-1] if batches else None
            if last is not None and component.group is not None and component.group == last.group:
                batches[-1].append(component)
            else:
                batches.append([component])
        for batch in batches:
            await self._drain_batch(batch)

    async def _drain_batch(self, batch: list[Component]) -> None:
        tasks = [c.task for c in batch if c.task is not None]
        for component in batch:
            component.stop.set()
        pending: set[asyncio.Future[Any]] = {t for t in tasks if not t.done()}
        if pending and not self._hurry.is_set():
            hurry = asyncio.create_task(self._hurry.wait())
            deadline = asyncio.get_running_loop().time() + max(c.drain_s for c in batch)
            while pending and not hurry.done():
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                _, pending = await asyncio.wait({*pending, hurry}, timeout=timeout,
                                                return_when=asyncio.FIRST_COMPLETED)
                pending.discard(hurry)
            hurry.cancel()
        for component in batch:
            task = component.task
            assert task is not None
            if not task.done():
                if self._hurry.is_set():
                    log.warning("%s cancelled: stopping fast", component.name,
                                extra=event("supervisor.component.hurried"))
                else:
                    log.error("%s did not stop within %.0fs; cancelled", component.name,
                              component.drain_s, extra=event("supervisor.component.timeout"))
                    self.failed.append(component.name)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                continue
            error = None if task.cancelled() else task.exception()
            if error is not None and component.name not in self.failed:
                log.error("%s failed while stopping: %r", component.name, error,
                          extra=event("supervisor.component.failed"))
                self.failed.append(component.name)
