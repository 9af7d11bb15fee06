"""The framework-free PLL algorithm: masked copies (the paper's one-token masks and within-word-l2r spans) and
pseudo-perplexity from per-token log-probabilities, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flava_jax.common.pll import masked_copies, pseudo_perplexity

MASK_ID, PAD_ID = 4, 0


def test_masked_copies_mask_the_rest_of_the_word_for_within_word_l2r() -> None:
    # [CLS] a b | c | d e f [SEP]: words 0, 1 and 2, two, one and three pieces.
    sentence = [2, 10, 11, 12, 13, 14, 15, 3]
    words = [None, 0, 0, 1, 2, 2, 2, None]
    assert masked_copies([sentence], PAD_ID).copies.tolist() == [[0, i, i + 1] for i in range(1, 7)]
    copies = masked_copies([sentence], PAD_ID, [words])
    assert copies.copies.tolist() == [[0, 1, 3], [0, 2, 3], [0, 3, 4], [0, 4, 7], [0, 5, 7], [0, 6, 7]]
    ids, positions, targets = copies.batch(0, len(copies), 10, MASK_ID)
    assert ids[3].tolist() == [2, 10, 11, 12, MASK_ID, MASK_ID, MASK_ID, 3, PAD_ID, PAD_ID]
    assert ids[1].tolist() == [2, 10, MASK_ID, 12, 13, 14, 15, 3, PAD_ID, PAD_ID]
    assert positions.tolist() == list(range(1, 7)) and targets.tolist() == sentence[1:-1]
    assert [v.tolist() for v in copies.per_sentence(np.arange(6.0))] == [[0, 1, 2, 3, 4, 5]]
    with pytest.raises(ValueError, match="one word index per token"):
        masked_copies([sentence], PAD_ID, [words[:-1]])


def test_pseudo_perplexity_by_hand() -> None:
    """Texts with NLLs (1, 2) and (4): the per-text mean gives exp((1.5 + 4) / 2), the token-weighted one
    exp(7 / 3); a text without inner tokens counts in neither."""
    got = pseudo_perplexity([np.array([-1.0, -2.0]), np.array([-4.0]), np.array([])])
    assert got["pppl"] == pytest.approx(math.exp(2.75), rel=1e-12)
    assert got["pppl_token_weighted"] == pytest.approx(math.exp(7 / 3), rel=1e-12)
    assert all(math.isnan(v) for v in pseudo_perplexity([]).values())
