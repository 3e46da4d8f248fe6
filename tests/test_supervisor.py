"""The supervisor's ordered, bounded drain: reverse order, groups together, hurry cancels."""

from __future__ import annotations

import asyncio

from recorder.supervisor import Supervisor


def component(log: list[str], name: str, linger_s: float) -> object:
    async def run(stop: asyncio.Event) -> None:
        await stop.wait()
        log.append(f"{name} asked")
        await asyncio.sleep(linger_s)
        log.append(f"{name} done")

    return run


async def test_components_stop_in_reverse_order_and_a_group_drains_together() -> None:
    log: list[str] = []
    supervisor = Supervisor()
    supervisor.add("writer", component(log, "writer", 0), drain_s=5)  # type: ignore[arg-type]
    for n in range(3):
        supervisor.add(f"id{n}", component(log, f"id{n}", 0.3), drain_s=5,  # type: ignore[arg-type]
                       group="identities")
    supervisor.add("api", component(log, "api", 0), drain_s=5)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    stop.set()
    assert await running == 0
    elapsed = asyncio.get_running_loop().time() - started
    assert log[:2] == ["api asked", "api done"]
    # All three identities were asked before any finished: together, not one after another.
    assert {log[2], log[3], log[4]} == {"id0 asked", "id1 asked", "id2 asked"}
    assert log[-2:] == ["writer asked", "writer done"]
    assert elapsed < 0.3 * 3, "the identities drained in turn"


async def test_a_component_over_its_budget_is_cancelled_and_counted_as_failed() -> None:
    log: list[str] = []
    supervisor = Supervisor()
    supervisor.add("slow", component(log, "slow", 30), drain_s=0.2)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    assert await running == 1
    assert supervisor.failed == ["slow"] and "slow done" not in log


async def test_hurry_cancels_what_still_drains() -> None:
    log: list[str] = []
    supervisor = Supervisor()
    supervisor.add("writer", component(log, "writer", 30), drain_s=60)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.sleep(0.1)
    supervisor.hurry()
    assert await asyncio.wait_for(running, 5) == 1
    assert supervisor.hurried and supervisor.failed == []
    assert log == ["writer asked"]
