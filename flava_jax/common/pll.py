"""Pseudo-log-likelihoods (Salazar et al. 2020) without a framework: the masked copies that both scorers (JAX's
`train.pll_scorer.PLLScorer` during training, PyTorch's `eval.torch_pll.TorchPLL` on an export) are built from, and
pseudo-perplexity from their per-token scores. This module imports neither JAX nor PyTorch.

A sentence [CLS] t_1 ... t_n [SEP] gives n copies, the i-th with t_i replaced by [MASK]; a scorer runs each copy
through the text encoder and returns the log-probability of the original token at the masked position, per sentence.

Within-word-l2r (Kauf & Ivanova 2023), an option beside the paper's metric: the copy scoring t_i also masks the
tokens to its right in t_i's word, so a word split into pieces is not scored from its own later pieces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class MaskedCopies:
    """The masked copies of tokenised sentences, in the order the scorers batch them (`masked_copies`)."""

    padded: np.ndarray  # (sentences, longest) token ids, `pad_id` after each sentence
    lengths: np.ndarray  # (sentences,) tokens per sentence, [CLS] and [SEP] included
    # (copies, 3): sentence, scored position, end of the masked span (exclusive); shortest sentences first, so that
    # batches of neighbours pad little.
    copies: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return len(self.copies)

    def longest(self, start: int, stop: int) -> int:
        """Tokens in the longest sentence among copies[start:stop] (the last one: copies are sorted by length)."""
        return int(self.lengths[self.copies[stop - 1, 0]])

    def batch(self, start: int, stop: int, length: int, mask_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, positions, targets) of copies[start:stop]: ids (rows, `length`) with each copy's span set to
        `mask_id` and `pad_id` after the sentence, the scored positions, and the original tokens there."""
        sentence, positions, ends = self.copies[start:stop].T
        ids = self.padded[sentence, :length]
        if length > ids.shape[1]:
            ids = np.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=self.pad_id)
        targets = ids[np.arange(len(ids)), positions]
        columns = np.arange(length)
        ids = np.where((columns >= positions[:, None]) & (columns < ends[:, None]), mask_id, ids)
        return ids, positions, targets

    def per_sentence(self, values: np.ndarray) -> list[np.ndarray]:
        """`values` (one per copy, in copy order) regrouped per sentence, in token order: entry i - 1 is the value
        of the copy scoring position i."""
        inner = np.maximum(self.lengths - 2, 0)
        offsets = np.concatenate([[0], np.cumsum(inner)])
        flat = np.zeros(offsets[-1], np.float64)
        flat[offsets[self.copies[:, 0]] + self.copies[:, 1] - 1] = values
        return np.split(flat, offsets[1:-1]) if len(inner) else []


def masked_copies(sentences: Sequence[Sequence[int]], pad_id: int,
                  words: Sequence[Sequence[int | None]] | None = None) -> MaskedCopies:
    """Every masked copy of `sentences` ([CLS] ... [SEP] ids): one per inner token, masking that token alone (the
    paper's PLL) or, given `words` (per sentence, each token's word index, None for special tokens, as a fast
    tokenizer's `word_ids()`), that token and the rest of its word to the right (within-word-l2r)."""
    lengths = np.array([len(ids) for ids in sentences], np.int64)
    padded = np.full((len(sentences), max(lengths, default=0)), pad_id, np.int64)
    for s, ids in enumerate(sentences):
        padded[s, :len(ids)] = ids
    if words is not None and [len(w) for w in words] != lengths.tolist():
        raise ValueError("masked_copies: `words` must give one word index per token of each sentence")
    copies = [(s, i, _span_end(words[s], i) if words is not None else i + 1)
              for s, n in enumerate(lengths.tolist()) for i in range(1, n - 1)]
    table = np.array(copies, np.int64).reshape(-1, 3)
    table = table[np.argsort(lengths[table[:, 0]], kind="stable")]
    return MaskedCopies(padded, lengths, table, pad_id)


def _span_end(words: Sequence[int | None], i: int) -> int:
    """One past the last token of position i's word (i + 1 when i is a special token or ends its word)."""
    end = i + 1
    while words[i] is not None and end < len(words) and words[end] == words[i]:
        end += 1
    return end


def pseudo_perplexity(logprobs: Sequence[np.ndarray]) -> dict[str, float]:
    """The reference's PPPL (exp of the mean over texts of each text's mean NLL, docs/reference.md#pseudo-perplexity)
    and the token-weighted one (exp of total NLL over total tokens); texts without inner tokens are left out."""
    scored = [lp for lp in logprobs if len(lp)]
    if not scored:
        return {"pppl": float("nan"), "pppl_token_weighted": float("nan")}
    mean_nll = float(np.mean([-lp.mean() for lp in scored]))
    token_nll = float(-np.sum([lp.sum() for lp in scored]) / sum(len(lp) for lp in scored))
    return {"pppl": math.exp(mean_nll), "pppl_token_weighted": math.exp(token_nll)}
