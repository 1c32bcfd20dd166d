"""Micro-batching: any message sizes in, exact micro-batches out, rows in order, no rows lost."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tt_server.training.decoding import Batch, MicroBatcher


def batch(start: int, rows: int) -> Batch:
    ids = np.arange(start, start + rows, dtype=np.float32)
    return Batch((ids.reshape(-1, 1),), (ids.astype(np.int64),), rows)


@given(size=st.integers(1, 50), messages=st.lists(st.integers(1, 120), max_size=20))
def test_rebatching_keeps_every_row_in_order(size: int, messages: list[int]) -> None:
    batcher = MicroBatcher(size)
    out: list[Batch] = []
    start = 0
    for rows in messages:
        out += batcher.add(batch(start, rows))
        start += rows
        assert batcher.pending_rows == start - sum(b.rows for b in out) < size
    full = len(out)
    out += batcher.flush()
    assert batcher.flush() == [] and batcher.pending_rows == 0
    assert all(b.rows == size for b in out[:full]) and all(0 < b.rows < size for b in out[full:])
    for b in out:
        assert b.features[0].shape == (b.rows, 1) and b.labels[0].shape == (b.rows,)
    ids = np.concatenate([b.features[0].ravel() for b in out]) if out else np.array([])
    np.testing.assert_array_equal(ids, np.arange(start))
    np.testing.assert_array_equal(np.concatenate([b.labels[0] for b in out]) if out else ids, ids)


def test_whole_micro_batches_inside_a_message_are_views() -> None:
    message = batch(0, 96)
    out = MicroBatcher(32).add(message)
    assert len(out) == 3 and all(np.shares_memory(b.features[0], message.features[0]) for b in out)
