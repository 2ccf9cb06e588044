"""Group commit (``vigil.store.group``): callers queued while a batch commits are
committed together, each answered with its own outcome; no caller is left waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from vigil.store.group import GroupCommit


class Gated:
    """A commit that holds its first batch until released, and records every batch."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail_on in items and len(self.batches) > 1:
            raise ConnectionError("the store went away")
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def submit_all(group: GroupCommit[int, int], gate: Gated, first: int, rest: list[int]) -> list:
    def call(item: int) -> object:
        try:
            return group.submit(item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(rest) + 1) as pool:
        leader = pool.submit(call, first)
        assert gate.entered.wait(10)  # the first batch is committing
        others = [pool.submit(call, item) for item in rest]
        deadline = time.monotonic() + 10
        while len(group._queue) < len(rest) and time.monotonic() < deadline:
            time.sleep(0.005)  # every other caller queued behind it
        gate.release.set()
        return [leader.result(10)] + [f.result(10) for f in others]


def test_callers_queued_during_a_commit_are_committed_together_each_with_its_result() -> None:
    gate = Gated()
    group: GroupCommit[int, int] = GroupCommit(gate)

    results = submit_all(group, gate, 1, [2, 3, 4, 5, 6])

    assert results == [10, 20, 30, 40, 50, 60]
    assert gate.batches[0] == [1]
    assert sorted(gate.batches[1]) == [2, 3, 4, 5, 6]
    assert (group.batches, group.items) == (2, 6)
    assert group.submit(7) == 70  # a lone caller commits at once, leading itself


def test_an_outcome_that_is_an_error_is_raised_to_its_caller_only() -> None:
    gate = Gated()
    group: GroupCommit[int, int] = GroupCommit(gate)

    results = submit_all(group, gate, 1, [2, -3, 4])

    assert results[0] == 10 and results[1] == 20 and results[3] == 40
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad -3"


def test_a_commit_that_fails_fails_every_caller_of_its_batch_and_no_other() -> None:
    gate = Gated(fail_on=3)
    group: GroupCommit[int, int] = GroupCommit(gate)

    results = submit_all(group, gate, 1, [2, 3])

    assert results[0] == 10
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    assert group.submit(4) == 40  # the lead was given back: the next caller is not stuck


def test_a_commit_that_answers_the_wrong_count_fails_its_callers() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1"):
        group.submit(1)
