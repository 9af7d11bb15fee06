"""BERT token masking, BEiT block masking and ITM negatives: rates, shapes and rules."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

from flava_jax.data import records
from flava_jax.data.masking import BlockMasking, mask_tokens
from flava_jax.data.pipeline import ImageTransform, PairTransform, TextTransform
from flava_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, Tokenizer
from tests.configs import pipeline_settings


def test_token_masking_rates_and_80_10_10() -> None:
    rng = np.random.default_rng(0)
    vocab, batch, length = 1000, 4000, 48
    ids = rng.integers(5, vocab, (batch, length))
    lengths = rng.integers(5, length + 1, batch)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = CLS_ID, SEP_ID, PAD_ID
    masked, labels = mask_tokens(ids, rng, 0.4, vocab, (PAD_ID, CLS_ID, SEP_ID), MASK_ID)
    special = np.isin(ids, (CLS_ID, SEP_ID, PAD_ID))
    picked = labels != -100
    assert not (picked & special).any() and (masked[special] == ids[special]).all()
    assert (labels[picked] == ids[picked]).all() and (masked[~picked] == ids[~picked]).all()

    def close(count: int, total: int, p: float) -> bool:  # within 4 binomial standard deviations
        return abs(count - p * total) <= 4 * math.sqrt(total * p * (1 - p))

    candidates = int((~special).sum())
    assert close(int(picked.sum()), candidates, 0.4)
    n = int(picked.sum())
    to_mask = masked[picked] == MASK_ID
    unchanged = masked[picked] == ids[picked]
    # A random replacement hits [MASK] or the original id with probability 1/vocab each.
    assert close(int(to_mask.sum()), n, 0.8 + 0.1 / vocab)
    assert close(int(unchanged.sum()), n, 0.1 + 0.1 / vocab)
    assert close(int((~to_mask & ~unchanged).sum()), n, 0.1 - 0.2 / vocab)
    replaced = masked[picked][~to_mask & ~unchanged]
    assert replaced.min() >= 0 and replaced.max() < vocab and len(np.unique(replaced)) > 0.5 * vocab


def test_block_masks_have_exactly_75_patches_and_obey_the_block_rules() -> None:
    masking = BlockMasking(14)  # the reference's parameters: 75 patches, blocks >= 16, aspect in [0.3, 1/0.3]
    rng = np.random.default_rng(0)
    for _ in range(1500):
        mask, blocks = masking.sample(rng)
        assert mask.shape == (196,) and mask.sum() == 75
        union = np.zeros((14, 14), bool)
        for b in blocks:
            assert 1 <= b.height < 14 and 1 <= b.width < 14
            assert 0 <= b.top <= 14 - b.height and 0 <= b.left <= 14 - b.width
            assert min(16, b.budget) <= b.area <= max(16, b.budget)
            assert 0.3 - 1e-9 <= b.aspect <= 1 / 0.3 + 1e-9
            assert (b.height, b.width) == (round(math.sqrt(b.area * b.aspect)), round(math.sqrt(b.area / b.aspect)))
            new = int((~union[b.top:b.top + b.height, b.left:b.left + b.width]).sum())
            assert 1 <= new <= b.budget == 75 - int(union.sum())
            union[b.top:b.top + b.height, b.left:b.left + b.width] = True
        assert (union.reshape(-1) == mask).all()


def test_reference_mode_matches_hf_generator_statistics() -> None:
    """exact=False is HF's FlavaMaskingGenerator, early stop included: same distribution of masked counts."""
    flava_pil = pytest.importorskip("transformers.models.flava.image_processing_pil_flava")
    random.seed(0)
    hf = flava_pil.FlavaMaskingGenerator()
    theirs = np.array([int(hf().sum()) for _ in range(6000)])
    masking = BlockMasking(14, exact=False)
    rng = np.random.default_rng(1)
    ours = np.array([int(masking(rng).sum()) for _ in range(6000)])
    short_ours, short_theirs = (ours < 75).mean(), (theirs < 75).mean()
    assert abs(short_ours - short_theirs) < 4 * math.sqrt(2 * 0.34 * 0.66 / 6000)
    assert abs(ours.mean() - theirs.mean()) < 0.15


def _jpeg(color: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (color, 0, 0)).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize("exclude_same_row", [False, True])
def test_itm_negatives_never_equal_the_positive(exclude_same_row: bool) -> None:
    """Every row has its caption and the page description shared by all of them, as WiT's pages do. A negative
    never has the positive's text; with the fix on, it never comes from the positive's own row."""
    source = [records.encode(row=r, text=text, image=_jpeg(r))
              for r in range(6) for text in (f"caption {r}", "the shared page description")]
    tokenizer = Tokenizer.train([records.decode(x).text for x in source] * 5, 40)
    settings = pipeline_settings("", grid_size=2, mask_patches=1, mask_min_block=1)
    pairs = PairTransform(TextTransform(tokenizer, 16, 0.4), ImageTransform(settings), source, 1.0,
                          exclude_same_row)
    rng = np.random.default_rng(0)
    own_row_negatives = 0
    for index in range(600):
        example = records.decode(source[index % len(source)])
        negative = pairs.negative(example, rng)
        assert negative is not None and negative.text != example.text
        own_row_negatives += negative.row == example.row
        out = pairs.random_map(source[index % len(source)], rng)
        assert int(out["itm_labels"]) == 0
        assert tokenizer.decode(out["input_ids"]) != tokenizer.decode(tokenizer.encode(example.text, 16))
    assert (own_row_negatives == 0) == exclude_same_row
