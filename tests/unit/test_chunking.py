"""The adaptive chunking policy (``_jobs.Job.chunk_size``), on its own: the chunks a job is cut
into for a given measured time per item. (That results are the same whatever the chunking is
checked by the parity suite, with real workers.)"""

from __future__ import annotations

import pytest

from nbpool._jobs import MIN_CHUNK_S, TARGET_CHUNK_S, Job, SequenceSource


def cuts(n_items: int, seconds_per_item: float, workers: int = 2) -> list[int]:
    """Chunk sizes of a map over ``range(n_items)`` whose first (probe) chunk came back
    measuring ``seconds_per_item``, as idle workers pull them one after another."""
    job = Job(1, None, "map", SequenceSource(range(n_items)), None, None)  # type: ignore[arg-type]
    sizes = []
    while job.has_work():
        start, items = job.cut(workers, None)
        assert start == sum(sizes)
        sizes.append(len(items))
        if len(sizes) == 1:
            job.record_time(len(items), seconds_per_item * len(items))
    return sizes


def test_tiny_items_go_in_a_few_chunks_not_a_long_tail():
    sizes = cuts(10_000, 100e-9)  # ~0.1 µs an item: the whole call is 1 ms of work
    assert sum(sizes) == 10_000
    assert len(sizes) <= 3, sizes  # the probe, then the rest (it is under MIN_CHUNK_S)


def test_the_tail_still_shrinks_for_balance_down_to_min_chunk_s_of_work():
    est = 1e-4  # 0.1 ms an item: 10,000 items are 1 s of work
    sizes = cuts(10_000, est)
    floor = round(MIN_CHUNK_S / est)
    assert sum(sizes) == 10_000
    assert max(sizes) <= round(TARGET_CHUNK_S / est)  # no chunk over the target
    assert all(s >= floor for s in sizes[1:-1]), sizes  # none under the floor but the last
    assert sizes[1] > sizes[-2], sizes  # shrinking towards the end


@pytest.mark.parametrize("est", [0.02, 1.0])
def test_long_items_are_not_lumped_by_the_floor(est):
    sizes = cuts(200, est)
    assert sum(sizes) == 200
    assert max(sizes) <= max(1, round(TARGET_CHUNK_S / est))  # 20 ms: 10 an item; 1 s: 1
