"""OffsetTracker: an offset is committable only when everything below it is done."""

from __future__ import annotations

from bridge.offsets import OffsetTracker

P0 = ("signals", 0)
P1 = ("signals", 1)


def test_nothing_is_committable_before_a_batch_is_done() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    assert tracker.committable() == {}


def test_a_done_batch_commits_the_offset_after_its_last_record() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9, P1: 4})
    tracker.complete("a")
    assert tracker.committable() == {P0: 10, P1: 5}


def test_a_later_batch_done_first_waits_for_the_earlier_one() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    tracker.add("b", {P0: 19})
    tracker.complete("b")
    assert tracker.committable() == {}
    tracker.complete("a")
    assert tracker.committable() == {P0: 20}


def test_partitions_advance_independently() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    tracker.add("b", {P1: 3})
    tracker.complete("b")
    assert tracker.committable() == {P1: 4}


def test_a_batch_spanning_partitions_holds_each_of_them() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    tracker.add("b", {P0: 19, P1: 3})
    tracker.add("c", {P1: 8})
    tracker.complete("c")
    assert tracker.committable() == {}
    tracker.complete("b")
    assert tracker.committable() == {P1: 9}
    tracker.complete("a")
    assert tracker.committable() == {P0: 20, P1: 9}


def test_committed_offsets_are_not_offered_again() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    tracker.complete("a")
    tracker.committed(tracker.committable())
    assert tracker.committable() == {}
    tracker.add("b", {P0: 12})
    tracker.complete("b")
    assert tracker.committable() == {P0: 13}


def test_forgotten_partitions_are_never_committed() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9, P1: 2})
    tracker.forget([P0])
    tracker.complete("a")
    assert tracker.committable() == {P1: 3}


def test_a_commit_names_the_batches_it_finishes() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9, P1: 4})
    tracker.add("b", {P0: 19})
    tracker.add("c", {P1: 8})
    tracker.complete("b")
    tracker.complete("c")
    assert tracker.covered() == []  # both wait behind "a"
    tracker.complete("a")
    assert tracker.committable() == {P0: 20, P1: 9}
    assert set(tracker.covered()) == {"a", "b", "c"}
    tracker.committed(tracker.committable())
    assert tracker.covered() == []


def test_a_batch_is_finished_only_when_every_partition_of_it_is_passed() -> None:
    tracker = OffsetTracker()
    tracker.add("a", {P1: 4})
    tracker.add("b", {P0: 9, P1: 14})
    tracker.complete("b")
    assert tracker.committable() == {P0: 10}
    assert tracker.covered() == []  # its records on P1 wait behind "a"
    tracker.complete("a")
    assert tracker.covered() == ["a", "b"]


def test_a_rebalance_leaves_no_finished_batch_to_name_at_the_next_commit() -> None:
    """Finished but not committed when their partitions were revoked: the next owner reads
    them again (and measures them then); this bridge's next commit does not cover them."""
    tracker = OffsetTracker()
    tracker.add("a", {P0: 4})
    tracker.complete("a")
    tracker.forget([P0])
    assert tracker.covered() == [] and tracker.committable() == {}


def test_forgetting_partitions_names_the_batches_left_with_nothing_to_wait_for() -> None:
    """A batch only on revoked partitions can move no watermark any more; one that also
    holds a partition still owned must still be waited for."""
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    tracker.add("b", {P0: 19, P1: 4})
    tracker.add("c", {P1: 9})
    assert tracker.forget([P0]) == {"a"}
    tracker.complete("c")
    assert tracker.committable() == {}  # "b" still holds P1
    tracker.complete("b")
    assert tracker.committable() == {P1: 10}
    assert tracker.forget([P1]) == set()  # nothing in flight there any more


def test_a_partition_given_back_starts_again_from_what_its_next_batch_covers() -> None:
    """Revoked and assigned again (an eager rebalance revokes everything): the records are
    read again from the committed offset; a batch of before that finishes moves nothing."""
    tracker = OffsetTracker()
    tracker.add("a", {P0: 9})
    assert tracker.forget([P0]) == {"a"}
    tracker.add("b", {P0: 9})  # the same records, read again
    tracker.complete("a")
    assert tracker.committable() == {}
    tracker.complete("b")
    assert tracker.committable() == {P0: 10}
