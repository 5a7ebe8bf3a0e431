"""The frozen message classes behave like frozen dataclasses and pickle compactly."""

from __future__ import annotations

import pickle

import pytest

from nbpool._worker.protocol import ChunkDone, ItemFailure, RunChunk


def test_fields_defaults_equality_and_pickling():
    m = ChunkDone(1, 2, 3, 0.5)
    assert m.failures == () and m.skipped is False
    f = ItemFailure(index=4, error=b"", tb="tb", type_name="ValueError", message="x")
    m2 = ChunkDone(1, 2, 3, 0.5, failures=(f,))
    assert m != m2 and m == ChunkDone(worker_id=1, job_id=2, chunk_id=3, elapsed=0.5)
    assert hash(m) == hash(ChunkDone(1, 2, 3, 0.5))
    assert pickle.loads(pickle.dumps(m2)) == m2
    assert "chunk_id=3" in repr(m)
    with pytest.raises(AttributeError):
        m.job_id = 5
    with pytest.raises(TypeError):
        ChunkDone(1, 2)
    with pytest.raises(TypeError):
        RunChunk(1, 2, 3, 4, "map", None, b"", 1, None, (), (), (), "extra")
