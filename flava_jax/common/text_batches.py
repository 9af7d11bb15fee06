"""Token-id sequences of many lengths in padded batches, shortest first, so that little padding is computed: shared by
the JAX and the PyTorch embedding scorers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def by_length(ids: Sequence[Sequence[int]], pad_id: int, batch_size: int,
              length_multiple: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows of `ids`, their (rows, length) int64 ids padded with `pad_id`) per batch, the sequences sorted by length,
    each batch padded to its longest rounded up to `length_multiple` (fewer shapes to compile)."""
    order = np.argsort([len(i) for i in ids], kind="stable")
    for start in range(0, len(ids), batch_size):
        rows = order[start:start + batch_size]
        length = -(-max(len(ids[r]) for r in rows) // length_multiple) * length_multiple
        batch = np.full((len(rows), length), pad_id, np.int64)
        for j, r in enumerate(rows):
            batch[j, :len(ids[r])] = ids[r]
        yield rows, batch
