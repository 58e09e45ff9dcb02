"""The torch backend's chunking: every (sample, row) exactly once, in a bounded number of chunks."""

from __future__ import annotations

import pytest

from fastforec_kernels import _chunked


def covered(batch: int, height: int, elements_per_row: int) -> list[tuple[int, int]]:
    cells = []
    for bs, rs in _chunked._chunks(batch, height, elements_per_row, pieces=_chunked.CHUNKS_PER_CALL):
        for b in range(batch)[bs]:
            cells.extend((b, r) for r in range(height)[rs])
    return cells


@pytest.mark.parametrize(("batch", "height", "elements_per_row"), [
    (8, 256, 21 * 256),  # the benchmark: two samples per chunk
    (8, 512, 21 * 512),
    (3, 1000, 21 * 1000),  # 3 samples: each split into row blocks
    (2, 48, 21 * 48),  # trainer-test sized: one chunk
    (5, 7, 3),
])
def test_chunks_cover_every_row_once(batch: int, height: int, elements_per_row: int) -> None:
    cells = covered(batch, height, elements_per_row)
    assert sorted(cells) == [(b, r) for b in range(batch) for r in range(height)]
    chunks = list(_chunked._chunks(batch, height, elements_per_row, pieces=_chunked.CHUNKS_PER_CALL))
    # Rounding to whole samples or rows can at most double the nominal chunk count.
    assert len(chunks) <= 2 * _chunked.CHUNKS_PER_CALL
    if batch * height * elements_per_row <= _chunked.MIN_CHUNK_ELEMENTS:
        assert len(chunks) == 1


def test_benchmark_shape_is_cut_into_whole_samples() -> None:
    chunks = list(_chunked._chunks(8, 256, 21 * 256, pieces=4))
    assert chunks == [(slice(b, b + 2), slice(None)) for b in range(0, 8, 2)]
    assert list(_chunked._chunks(8, 256, 21 * 256, pieces=1)) == [(slice(0, 8), slice(None))]


def test_large_samples_are_cut_into_rows() -> None:
    chunks = list(_chunked._chunks(1, 512, 21 * 512, pieces=4))
    assert len(chunks) == 4 and all(bs == slice(0, 1) for bs, _ in chunks)
    assert chunks[0][1] == slice(0, 128)
