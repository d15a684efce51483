"""Event-loop lag: how late the loop runs a timer, i.e. how long any coroutine of this
process waits for the CPU (a blocking call, a long Pillow step on the loop, or too much work
for one core). A task sleeps `interval` seconds and records how much longer the sleep took
(`fluxgate_event_loop_lag_seconds`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL = 0.5  # seconds between two measurements


class LoopLagMonitor:
    """Measures lag while started; `observe` receives each measurement in seconds."""

    def __init__(self, observe: Callable[[float], None], interval: float = INTERVAL) -> None:
        self.observe = observe
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics:loop-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, time.perf_counter() - started - self.interval))
