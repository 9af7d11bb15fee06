"""The reference's masking, on numpy with an explicit Generator (paper_reference.md §2.3).

* `mask_tokens`: BERT MLM masking (HF DataCollatorForLanguageModeling): each non-special token is picked with
  probability p; of those, 80% become [MASK], 10% a uniformly random id, 10% stay.
* `BlockMasking`: BEiT block masking (HF FlavaMaskingGenerator): rectangles of random area and aspect ratio until
  the target count is reached or a round of 10 attempts adds nothing.
"""

from __future__ import annotations

import math

import numpy as np

from flava_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from flava_jax.losses import IGNORE_INDEX


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, probability: float, vocab_size: int,
                special_ids: tuple[int, ...] = (PAD_ID, CLS_ID, SEP_ID),
                mask_id: int = MASK_ID) -> tuple[np.ndarray, np.ndarray]:
    """(masked ids, MLM labels): labels hold the original id where a token was picked, IGNORE_INDEX elsewhere."""
    picked = (rng.random(ids.shape) < probability) & ~np.isin(ids, special_ids)
    roll = rng.random(ids.shape)
    masked = np.where(picked & (roll < 0.8), mask_id, ids)
    masked = np.where(picked & (roll >= 0.8) & (roll < 0.9), rng.integers(0, vocab_size, ids.shape), masked)
    return masked.astype(ids.dtype), np.where(picked, ids, IGNORE_INDEX).astype(ids.dtype)


class BlockMasking:
    """BEiT block masks on a `grid` x `grid` patch grid; the reference uses 75 of 196 patches, blocks >= 16."""

    def __init__(self, grid: int, num_masked: int = 75, min_block: int = 16, min_aspect: float = 0.3,
                 max_block: int | None = None) -> None:
        self.grid = grid
        self.num_masked = num_masked
        self.min_block = min_block
        self.max_block = num_masked if max_block is None else max_block
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Up to 10 attempts at one block adding between 1 and `budget` new patches; returns how many it added."""
        for _ in range(10):
            # Python's random.uniform(a, b) = a + (b - a) * U, which the reference relies on when b < a.
            area = self.min_block + (budget - self.min_block) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect))
            height, width = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if height < self.grid and width < self.grid:
                top = int(rng.integers(0, self.grid - height + 1))
                left = int(rng.integers(0, self.grid - width + 1))
                block = mask[top:top + height, left:left + width]
                new = int((~block).sum())
                if 0 < new <= budget:
                    block[:] = True
                    return new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """A (grid * grid,) boolean mask, row-major like the patch sequence."""
        mask = np.zeros((self.grid, self.grid), bool)
        count = 0
        while count < self.num_masked:
            added = self._add_block(mask, min(self.num_masked - count, self.max_block), rng)
            if added == 0:
                break
            count += added
        return mask.reshape(-1)
