"""The endpoint's indexes: timer heap with replaced deadlines, peer index, half-open counts."""

from __future__ import annotations

from ipsec_mesh.ike.registry import HalfOpenCount, PeerIndex, TimerQueue


def test_timer_queue_keeps_only_each_keys_latest_deadline():
    timers = TimerQueue()
    timers.set("a", 10.0)
    timers.set("b", 5.0)
    timers.set("b", 20.0)  # replaced: the old 5.0 must not surface
    assert timers.earliest() == 10.0
    timers.set("a", None)
    assert timers.earliest() == 20.0
    assert timers.pop_due(19.0) == []
    assert timers.pop_due(20.0) == ["b"] and timers.earliest() is None


def test_timer_queue_pops_due_keys_in_deadline_order_and_stays_compact():
    timers = TimerQueue()
    for round_ in range(200):  # many replacements: the heap is compacted, answers stay right
        for key in range(10):
            timers.set(key, 100.0 + key + round_)
    assert timers.earliest() == 100.0 + 199
    assert len(timers._heap) <= 4 * 10 + 64
    assert timers.pop_due(100.0 + 199 + 2) == [0, 1, 2]


def test_peer_index_moves_items_when_the_address_changes():
    index = PeerIndex()
    index.put("x", "sa-x", "10.0.0.1", initiated_by_us=True)
    index.put("y", "sa-y", "10.0.0.1", initiated_by_us=False)
    assert index.initiated_by_us("10.0.0.1") == ["sa-x"]
    assert sorted(index.all("10.0.0.1")) == ["sa-x", "sa-y"]
    index.put("y", "sa-y", "192.0.2.9", initiated_by_us=False)  # a NAT rebinding
    assert index.all("10.0.0.1") == ["sa-x"] and index.all("192.0.2.9") == ["sa-y"]
    index.remove("x")
    index.remove("x")  # twice is harmless
    assert index.all("10.0.0.1") == [] and index.initiated_by_us("10.0.0.1") == []


def test_half_open_count_per_source():
    count = HalfOpenCount()
    count.add(1, "10.0.0.1")
    count.add(1, "10.0.0.1")  # counted once
    count.add(2, "10.0.0.1")
    count.add(3, "10.0.0.2")
    assert count.total == 3 and count.count("10.0.0.1") == 2
    assert count.oldest_of_heaviest() == (1, 2)
    count.discard(1)
    assert count.oldest_of_heaviest() == (2, 1)  # a tie: the source that held first
    count.discard(2)
    count.discard(9)  # unknown: ignored
    assert count.total == 1 and count.count("10.0.0.1") == 0
    assert count.oldest_of_heaviest() == (3, 1)
    count.discard(3)
    assert count.oldest_of_heaviest() is None
