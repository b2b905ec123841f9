"""Latest-frame store: newest wins, drops counted, no queueing, stamps picked by proximity."""

from __future__ import annotations

import threading

import pytest

from spatialthinker_ros.ros.frames import Frame, LatestFrame, StampedHistory


def test_empty_store_has_no_frame() -> None:
    store: LatestFrame[str] = LatestFrame()
    assert store.peek() is None
    assert store.take() is None
    assert store.stats.received == 0 and store.stats.dropped == 0


def test_newest_frame_wins_and_unused_frames_count_as_dropped() -> None:
    store: LatestFrame[str] = LatestFrame()
    for i in range(5):
        store.put(f"frame{i}", stamp_s=float(i + 1))
    frame = store.take()
    assert frame is not None and frame.message == "frame4" and frame.stamp_s == 5.0
    assert frame.seq == 5
    assert store.stats.received == 5
    assert store.stats.dropped == 4  # frames 0-3 were replaced before anyone used them


def test_used_frame_is_not_counted_as_dropped_when_replaced() -> None:
    store: LatestFrame[str] = LatestFrame()
    store.put("a", 1.0)
    assert store.take().message == "a"
    store.put("b", 2.0)
    assert store.stats.dropped == 0
    store.put("c", 3.0)
    assert store.stats.dropped == 1


def test_peek_does_not_mark_used() -> None:
    store: LatestFrame[str] = LatestFrame()
    store.put("a", 1.0)
    assert store.peek().message == "a"
    store.put("b", 2.0)
    assert store.stats.dropped == 1


def test_zero_stamp_falls_back_to_receipt_time() -> None:
    store: LatestFrame[str] = LatestFrame()
    store.put("a", 0.0, received_s=42.0)
    frame = store.peek()
    assert frame.stamp_s == 42.0 and frame.received_s == 42.0
    assert frame.age_s(43.5) == pytest.approx(1.5)


def test_store_keeps_the_message_object_itself() -> None:
    store: LatestFrame[bytearray] = LatestFrame()
    payload = bytearray(1024)
    store.put(payload, 1.0)
    assert store.take().message is payload


def test_clear_forgets_the_frame() -> None:
    store: LatestFrame[str] = LatestFrame()
    store.put("a", 1.0)
    store.clear()
    assert store.take() is None


def test_concurrent_puts_keep_counts_consistent() -> None:
    store: LatestFrame[int] = LatestFrame()
    n_threads, per_thread = 4, 2000

    def produce(offset: int) -> None:
        for i in range(per_thread):
            store.put(offset + i, float(i + 1))

    threads = [threading.Thread(target=produce, args=(k * per_thread,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = store.stats
    assert stats.received == n_threads * per_thread
    assert stats.dropped == stats.received - 1  # only the last one is still there, unused
    assert store.peek().seq == stats.received


def test_history_picks_closest_stamp_within_tolerance() -> None:
    history: StampedHistory[str] = StampedHistory(capacity=4)
    for stamp in (1.0, 1.1, 1.2, 1.3):
        history.put(f"d{stamp}", stamp)
    assert history.closest(1.12, tolerance_s=0.05) == "d1.1"
    assert history.closest(1.26, tolerance_s=0.05) == "d1.3"
    assert history.closest(2.0, tolerance_s=0.05) is None
    assert history.newest() == "d1.3"


def test_history_is_bounded() -> None:
    history: StampedHistory[int] = StampedHistory(capacity=3)
    for i in range(100):
        history.put(i, float(i))
    assert len(history) == 3
    assert history.closest(0.0, tolerance_s=0.5) is None  # fell out long ago
    assert history.closest(98.0, tolerance_s=0.5) == 98


def test_history_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError):
        StampedHistory(capacity=0)


def test_unusable_reason_covers_old_future_and_stopped_cameras() -> None:
    fresh = Frame("m", stamp_s=100.0, received_s=100.0, seq=1)
    assert fresh.unusable_reason(100.5, max_age_s=1.0, max_future_s=0.5) is None
    assert "1.50 s old" in fresh.unusable_reason(101.5, max_age_s=1.0, max_future_s=0.5)
    ahead = Frame("m", stamp_s=200.0, received_s=100.0, seq=2)  # camera clock 100 s ahead
    reason = ahead.unusable_reason(100.1, max_age_s=1.0, max_future_s=0.5)
    assert "ahead of the node's clock" in reason
    slightly_ahead = Frame("m", stamp_s=100.3, received_s=100.0, seq=3)
    assert slightly_ahead.unusable_reason(100.0, max_age_s=1.0, max_future_s=0.5) is None
    # A stopped camera whose stamps run ahead within the tolerance still goes stale by receipt.
    assert "old" in slightly_ahead.unusable_reason(105.0, max_age_s=1.0, max_future_s=10.0)


def test_wait_for_returns_the_first_frame_stamped_late_enough() -> None:
    store: LatestFrame[str] = LatestFrame()
    store.put("old", 10.0, 10.0)
    assert store.wait_for(11.0, 0.01) is None
    threading.Timer(0.05, lambda: store.put("new", 11.5, 11.5)).start()
    frame = store.wait_for(11.0, 10.0)
    assert frame is not None and frame.message == "new"


def test_mark_used_marks_only_the_frame_still_newest() -> None:
    store: LatestFrame[str] = LatestFrame()
    store.put("a", 1.0)
    checked = store.peek()
    store.put("b", 2.0)  # arrived after the check: "a" was replaced unused
    store.mark_used(checked)
    store.put("c", 3.0)
    assert store.stats.dropped == 2
    store.mark_used(store.peek())
    store.put("d", 4.0)
    assert store.stats.dropped == 2
