"""Issue 14: what start-up built is left out of full garbage collections (controller/gcfreeze.py)."""

from __future__ import annotations

import asyncio
import gc

from ipsec_mesh_operator.controller.gcfreeze import CollectorPause, freeze_start_up_state


def test_start_up_state_is_frozen_and_no_longer_walked_by_full_collections():
    index = [{"pod": i} for i in range(20_000)]  # what a listing leaves: long-lived containers
    gc.collect()
    walked_before = len(gc.get_objects())
    try:
        frozen = freeze_start_up_state()
        assert frozen >= len(index) and gc.get_freeze_count() == frozen
        # A full collection walks what gc.get_objects() lists: the frozen state is no longer in it.
        assert len(gc.get_objects()) <= walked_before - len(index)
        assert not any(entry is index for entry in gc.get_objects())
    finally:
        gc.unfreeze()


def test_the_collector_pauses_for_the_listing_and_resumes_at_its_end_or_after_the_bound():
    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        seen = []
        pause = CollectorPause(loop, bound=3600)
        seen.append(gc.isenabled())
        pause.end()
        pause.end()  # idempotent
        seen.append(gc.isenabled())
        stuck = CollectorPause(loop, bound=0.01)  # a listing that never comes in
        seen.append(gc.isenabled())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if gc.isenabled():
                break
        seen.append(gc.isenabled())
        stuck.end()
        gc.disable()
        CollectorPause(loop, bound=0.01).end()  # a collector already off stays off
        seen.append(gc.isenabled())
        gc.enable()
        return seen

    assert gc.isenabled()
    assert asyncio.run(scenario()) == [False, True, False, True, False]
    assert gc.isenabled()


def test_the_operators_start_up_pauses_the_collector_around_the_listing_only():
    """handlers.startup: the pause starts before the feeder runs and ends once it has synced."""
    import inspect

    from ipsec_mesh_operator import handlers

    source = inspect.getsource(handlers.startup)
    assert source.index("CollectorPause(") < source.index("feeder.run()") < source.index("feeder.synced.wait()")
    assert source.index("feeder.synced.wait()") < source.index("pause.end()") < source.index("freeze_start_up_state()")
