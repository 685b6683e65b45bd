"""Issue 14: what start-up built is left out of full garbage collections (controller/gcfreeze.py)."""

from __future__ import annotations

import gc

from ipsec_mesh_operator.controller.gcfreeze import freeze_start_up_state


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
