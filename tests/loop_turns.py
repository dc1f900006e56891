"""Counting the event loop's turns, to tell what ran in one turn from what was spread over many.

Imported as `loop_turns` (pytest puts tests/ on the path; see pyproject.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class LoopTurns:
    """The number of loop turns since counting began: a task beside the code under test adds one each
    turn (it is ready in every turn, and runs once in each)."""

    def __init__(self) -> None:
        self.turns = 0

    async def _count(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def counting_loop_turns() -> AsyncIterator[LoopTurns]:
    """Count the loop's turns while the block runs."""
    counter = LoopTurns()
    task = asyncio.create_task(counter._count())
    await asyncio.sleep(0)  # the counter runs from the next turn on
    try:
        yield counter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
