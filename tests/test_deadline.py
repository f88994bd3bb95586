"""``Deadline``: one timer bounding many waits; only time spent inside a wait counts."""

from __future__ import annotations

import asyncio

import pytest

from modelgate.deadline import Deadline


async def _wait(deadline: Deadline, seconds: float, limit: float) -> str:
    """One guarded wait of ``seconds``: "done", or "expired" when the deadline cut it."""
    deadline.begin_in(limit)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if deadline.fired():
            return "expired"
        raise
    finally:
        deadline.end()
    return "done"


def test_a_wait_past_the_deadline_is_cut_and_the_task_is_not_left_cancelling() -> None:
    async def main() -> tuple[str, int]:
        deadline = Deadline(asyncio.get_running_loop())
        outcome = await _wait(deadline, 5, limit=0.05)
        deadline.stop()
        task = asyncio.current_task()
        assert task is not None
        return outcome, task.cancelling()

    assert asyncio.run(main()) == ("expired", 0)


def test_waits_each_under_the_limit_are_never_cut_however_long_they_add_up_to() -> None:
    async def main() -> list[str]:
        deadline = Deadline(asyncio.get_running_loop())
        outcomes = [await _wait(deadline, 0.03, limit=0.1) for _ in range(10)]  # 0.3 s in all
        deadline.stop()
        return outcomes

    assert asyncio.run(main()) == ["done"] * 10


def test_time_between_waits_does_not_count() -> None:
    async def main() -> str:
        deadline = Deadline(asyncio.get_running_loop())
        assert await _wait(deadline, 0, limit=0.05) == "done"
        await asyncio.sleep(0.15)  # the consumer's own work, outside any wait; the timer fires meanwhile
        outcome = await _wait(deadline, 0.01, limit=0.05)
        deadline.stop()
        return outcome

    assert asyncio.run(main()) == "done"


def test_a_shorter_deadline_takes_effect_at_once() -> None:
    async def main() -> str:
        deadline = Deadline(asyncio.get_running_loop())
        assert await _wait(deadline, 0, limit=30) == "done"  # the timer is armed 30 s out
        outcome = await _wait(deadline, 5, limit=0.05)
        deadline.stop()
        return outcome

    assert asyncio.run(main()) == "expired"


def test_a_real_cancellation_is_not_taken_for_the_deadline() -> None:
    async def main() -> None:
        deadline = Deadline(asyncio.get_running_loop())
        task = asyncio.create_task(_wait(deadline, 5, limit=30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline.stop()

    asyncio.run(main())
