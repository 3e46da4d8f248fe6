"""The daemon's export component: APScheduler 3 fires each `[[exports]]` job on schedule.

- In-memory job store only: job stores must never be shared between schedulers, and
  coordination between instances happens in PostgreSQL (the `exports` lease: every instance
  schedules, only its holder runs; behind it the job's running-row check and the slot check on
  `export_runs.scheduled_for`), not in APScheduler.
- `coalesce` + `max_instances=1` + no misfire limit: runs missed while the loop was busy
  collapse into one late run, and a job never overlaps itself. A run that is due while the
  daemon is down is not made up for: the next run exports everything since the checkpoint.
- On stop, no new run starts; a running export gets the component's drain time to finish,
  then is cancelled (its window is redone by the next run).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence

from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from recorder.exports.jobs import ExportJob
from recorder.exports.runner import Exporter, JobBusyError
from recorder.logs import event

log = logging.getLogger(__name__)


class ExportScheduler:
    def __init__(
        self, exporter: Exporter, jobs: Sequence[ExportJob],
        *, on_failure: Callable[[str], None] | None = None,
        allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.exporter = exporter
        self.jobs = {job.name: job for job in jobs}
        self._on_failure = on_failure
        self._allowed = allowed  # this instance holds the exports lease (None: always)
        self.skipped = 0  # slots left to the instance holding the lease
        self._slots: dict[str, dt.datetime] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.runs = 0  # finished runs, successful or not (for tests and status)

    async def run(self, stop: asyncio.Event) -> None:
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=dt.UTC)
        scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED)
        for job in self.jobs.values():
            scheduler.add_job(
                self._fire, trigger=job.trigger(), args=[job.name], id=job.name,
                name=f"export {job.name}", coalesce=True, max_instances=1,
                misfire_grace_time=None, replace_existing=True,
            )
        scheduler.start()
        for scheduled in scheduler.get_jobs():
            log.info("export %s: %s %s format, next run at %s", scheduled.id,
                     self.jobs[scheduled.id].kind, self.jobs[scheduled.id].format,
                     scheduled.next_run_time.isoformat(), extra=event("export.job.scheduled"))
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            running = set(self._running)
            if running:
                log.info("waiting for %d running export(s) to finish", len(running),
                         extra=event("export.scheduler.draining"))
                try:
                    await asyncio.gather(*running, return_exceptions=True)
                except asyncio.CancelledError:
                    for task in running:
                        task.cancel()
                    await asyncio.gather(*running, return_exceptions=True)
                    raise

    def _submitted(self, event: JobSubmissionEvent) -> None:
        # Dispatched right after the executor made the run's task, before the task starts.
        if event.scheduled_run_times:
            self._slots[event.job_id] = max(event.scheduled_run_times)

    async def _fire(self, name: str) -> None:
        # APScheduler's executor cancels the jobs it runs when it shuts down; the export runs
        # as a task of our own, so a stop lets it finish within the component's drain time.
        slot = self._slots.pop(name, None)
        task = asyncio.create_task(self._export(name, slot), name=f"export {name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        await asyncio.shield(task)

    async def _export(self, name: str, slot: dt.datetime | None) -> None:
        job = self.jobs[name]
        if self._allowed is not None and not self._allowed():
            self.skipped += 1
            log.debug("export %s: another instance holds the exports lease; skipped", name,
                      extra=event("export.run.not_ours"))
            return
        try:
            await self.exporter.run_job(job, scheduled_for=slot)
        except JobBusyError:
            log.info("export %s: another instance is running it; skipped", name,
                     extra=event("export.run.busy"))
        except Exception:
            log.exception("export %s failed; its window is redone by the next run", name,
                          extra=event("export.run.failed"))
            if self._on_failure is not None:
                self._on_failure(name)
        finally:
            self.runs += 1
