"""Pseudo-log-likelihoods in JAX (Salazar et al. 2020), for BLiMP and pseudo-perplexity during training, and the
masked copies both scorers (this one and `torch_pll.TorchPLL`) are built from.

A sentence [CLS] t_1 ... t_n [SEP] gives n copies, the i-th with t_i replaced by [MASK]; each copy goes through the
text encoder (the masked, text-only pass, as the reference feeds `input_ids_masked`), and the MLM head is run at
the masked position only. The per-token log-probabilities of the original tokens come back per sentence. Copies
of many sentences are sorted by length and batched, each batch padded to a multiple of 16 tokens, so few shapes
compile.

Within-word-l2r (Kauf & Ivanova 2023), an option beside the paper's metric: the copy scoring t_i also masks the
tokens to its right in t_i's word, so a word split into pieces is not scored from its own later pieces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from flava_jax.data.tokenizer import MASK_ID, PAD_ID
from flava_jax.losses import IGNORE_INDEX
from flava_jax.model import FlavaForPreTraining

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class MaskedCopies:
    """The masked copies of tokenised sentences, in the order the scorers batch them (`masked_copies`)."""

    padded: np.ndarray  # (sentences, longest) token ids, [PAD] after each sentence
    lengths: np.ndarray  # (sentences,) tokens per sentence, [CLS] and [SEP] included
    # (copies, 3): sentence, scored position, end of the masked span (exclusive); shortest sentences first, so that
    # batches of neighbours pad little.
    copies: np.ndarray

    def __len__(self) -> int:
        return len(self.copies)

    def longest(self, start: int, stop: int) -> int:
        """Tokens in the longest sentence among copies[start:stop] (the last one: copies are sorted by length)."""
        return int(self.lengths[self.copies[stop - 1, 0]])

    def batch(self, start: int, stop: int, length: int, mask_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, positions, targets) of copies[start:stop]: ids (rows, `length`) with each copy's span set to
        `mask_id` and [PAD] after the sentence, the scored positions, and the original tokens there."""
        sentence, positions, ends = self.copies[start:stop].T
        ids = self.padded[sentence, :length]
        if length > ids.shape[1]:
            ids = np.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=PAD_ID)
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


def masked_copies(sentences: Sequence[Sequence[int]],
                  words: Sequence[Sequence[int | None]] | None = None) -> MaskedCopies:
    """Every masked copy of `sentences` ([CLS] ... [SEP] ids): one per inner token, masking that token alone (the
    paper's PLL) or, given `words` (per sentence, each token's word index, None for special tokens, as a fast
    tokenizer's `word_ids()`), that token and the rest of its word to the right (within-word-l2r)."""
    lengths = np.array([len(ids) for ids in sentences], np.int64)
    padded = np.full((len(sentences), max(lengths, default=0)), PAD_ID, np.int64)
    for s, ids in enumerate(sentences):
        padded[s, :len(ids)] = ids
    if words is not None and [len(w) for w in words] != lengths.tolist():
        raise ValueError("masked_copies: `words` must give one word index per token of each sentence")
    copies = [(s, i, _span_end(words[s], i) if words is not None else i + 1)
              for s, n in enumerate(lengths.tolist()) for i in range(1, n - 1)]
    table = np.array(copies, np.int64).reshape(-1, 3)
    table = table[np.argsort(lengths[table[:, 0]], kind="stable")]
    return MaskedCopies(padded, lengths, table)


def _span_end(words: Sequence[int | None], i: int) -> int:
    """One past the last token of position i's word (i + 1 when i is a special token or ends its word)."""
    end = i + 1
    while words[i] is not None and end < len(words) and words[end] == words[i]:
        end += 1
    return end


class PLLScorer:
    """`token_logprobs(params, sentences)`: natural-log probabilities of each original token, per sentence."""

    def __init__(self, model: FlavaForPreTraining, batch_size: int = 128, length_multiple: int = 16,
                 sharding: NamedSharding | None = None) -> None:
        self.batch_size, self.length_multiple, self.sharding = batch_size, length_multiple, sharding

        def logprobs(params: Any, masked: jax.Array, positions: jax.Array, targets: jax.Array) -> jax.Array:
            labels = jnp.full_like(masked, IGNORE_INDEX).at[jnp.arange(masked.shape[0]), positions].set(targets)
            out = model.apply({"params": params}, input_ids_masked=masked, attention_mask=(masked != PAD_ID),
                              mlm_labels=labels, text_mask_capacity=1, return_loss=False)
            logp = jax.nn.log_softmax(out.mlm_logits[:, 0].astype(jnp.float32), axis=-1)
            return jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]

        # Inputs split over devices; the (small) output replicated, so every process can read it.
        replicated = None if sharding is None else NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        self._logprobs = jax.jit(logprobs, out_shardings=replicated)

    def _place(self, x: np.ndarray) -> Any:
        if self.sharding is None:
            return x
        return jax.make_array_from_callback(x.shape, self.sharding, lambda index: x[index])

    def token_logprobs(self, params: Any, sentences: Sequence[Sequence[int]],
                       words: Sequence[Sequence[int | None]] | None = None) -> list[np.ndarray]:
        """For each sentence ([CLS] ... [SEP] ids), the log-probability of each inner token when it is masked (with
        the rest of its word to the right when `words` is given: within-word-l2r, see `masked_copies`)."""
        copies = masked_copies(sentences, words)
        values = np.zeros(len(copies), np.float64)
        for start in range(0, len(copies), self.batch_size):
            stop = min(start + self.batch_size, len(copies))
            length = -(-copies.longest(start, stop) // self.length_multiple) * self.length_multiple
            # Fixed batch shape: padding rows are all [PAD], scored at position 1, and dropped.
            padding = ((0, self.batch_size - (stop - start)),)
            ids, positions, targets = copies.batch(start, stop, length, MASK_ID)
            inputs = (np.pad(ids, padding + ((0, 0),), constant_values=PAD_ID).astype(np.int32),
                      np.pad(positions, padding, constant_values=1).astype(np.int32),
                      np.pad(targets, padding).astype(np.int32))
            out = np.asarray(self._logprobs(params, *(self._place(x) for x in inputs)))
            values[start:stop] = out[:stop - start]
        return copies.per_sentence(values)


def pseudo_perplexity(logprobs: Sequence[np.ndarray]) -> dict[str, float]:
    """The reference's PPPL (exp of the mean over texts of each text's mean NLL, paper §5.2) and the token-weighted
    one (exp of total NLL over total tokens); texts without inner tokens are left out."""
    scored = [lp for lp in logprobs if len(lp)]
    if not scored:
        return {"pppl": float("nan"), "pppl_token_weighted": float("nan")}
    mean_nll = float(np.mean([-lp.mean() for lp in scored]))
    token_nll = float(-np.sum([lp.sum() for lp in scored]) / sum(len(lp) for lp in scored))
    return {"pppl": math.exp(mean_nll), "pppl_token_weighted": math.exp(token_nll)}
