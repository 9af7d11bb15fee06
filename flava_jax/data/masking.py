"""The reference's masking, on numpy with an explicit Generator (docs/reference.md#masking).

* `mask_tokens`: BERT MLM masking (HF DataCollatorForLanguageModeling): each non-special token is picked with
  probability p; of those, 80% become [MASK], 10% a uniformly random id, 10% stay.
* `BlockMasking`: BEiT block masking (HF FlavaMaskingGenerator): rectangles of random area and aspect ratio until
  the target count is reached (or, with `exact=False`, as the reference, until a round of 10 attempts adds
  nothing).
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import numpy as np

from flava_jax.model.losses import IGNORE_INDEX


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, probability: float, vocab_size: int,
                special_ids: tuple[int, ...], mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(masked ids, MLM labels): labels hold the original id where a token was picked, IGNORE_INDEX elsewhere."""
    picked = (rng.random(ids.shape) < probability) & ~np.isin(ids, special_ids)
    roll = rng.random(ids.shape)
    masked = np.where(picked & (roll < 0.8), mask_id, ids)
    masked = np.where(picked & (roll >= 0.8) & (roll < 0.9), rng.integers(0, vocab_size, ids.shape), masked)
    return masked.astype(ids.dtype), np.where(picked, ids, IGNORE_INDEX).astype(ids.dtype)


class Block(NamedTuple):
    """One placed rectangle, with the area and aspect ratio it was drawn from."""

    top: int
    left: int
    height: int
    width: int
    area: float
    aspect: float
    budget: int  # patches still to mask when it was drawn


class BlockMasking:
    """BEiT block masks on a `grid` x `grid` patch grid; the reference uses 75 of 196 patches, blocks >= 16.

    `exact=True` (default) keeps drawing rounds until exactly `num_masked` patches are masked. The reference
    (HF FlavaMaskingGenerator) stops as soon as one round of 10 attempts adds nothing, which leaves about a third
    of its masks with fewer than 75 patches; `exact=False` reproduces that.
    """

    def __init__(self, grid: int, num_masked: int = 75, min_block: int = 16, min_aspect: float = 0.3,
                 max_block: int | None = None, exact: bool = True, max_rounds: int = 10_000) -> None:
        if not 0 <= num_masked <= grid * grid:
            raise ValueError(f"cannot mask {num_masked} of {grid}x{grid} patches")
        self.grid = grid
        self.num_masked = num_masked
        self.min_block = min_block
        self.max_block = num_masked if max_block is None else max_block
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.exact, self.max_rounds = exact, max_rounds

    def _add_block(self, rows: list[int], budget: int, rng: random.Random) -> Block | None:
        """One round: up to 10 attempts at a block adding between 1 and `budget` new patches. `rows` holds the
        mask as one bit per column per row (cheaper than numpy on a 14x14 grid)."""
        for _ in range(10):
            area = rng.uniform(self.min_block, budget)  # as the reference: b < a is allowed
            aspect = math.exp(rng.uniform(*self.log_aspect))
            height, width = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if height < self.grid and width < self.grid:
                top = rng.randint(0, self.grid - height)
                left = rng.randint(0, self.grid - width)
                bits = ((1 << width) - 1) << left
                new = sum((bits & ~rows[r]).bit_count() for r in range(top, top + height))
                if 0 < new <= budget:
                    for r in range(top, top + height):
                        rows[r] |= bits
                    return Block(top, left, height, width, area, aspect, budget)
        return None

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, list[Block]]:
        """A (grid * grid,) boolean mask, row-major like the patch sequence, and the blocks that made it."""
        rows = [0] * self.grid
        blocks: list[Block] = []
        count = 0
        # Python's generator (seeded from `rng`): its scalar draws are far cheaper than numpy's one by one.
        scalar_rng = random.Random(int(rng.integers(2**63)))
        for _ in range(self.max_rounds):
            if count >= self.num_masked:
                break
            block = self._add_block(rows, min(self.num_masked - count, self.max_block), scalar_rng)
            if block is not None:
                blocks.append(block)
                count = sum(row.bit_count() for row in rows)
            elif not self.exact:
                break
        columns = np.arange(self.grid)
        mask = (np.asarray(rows, np.int64)[:, None] >> columns) & 1
        return mask.reshape(-1).astype(bool), blocks

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample(rng)[0]
