"""Pseudo-log-likelihoods in JAX (Salazar et al. 2020), for BLiMP and pseudo-perplexity during training.

A sentence [CLS] t_1 ... t_n [SEP] gives n copies, the i-th with t_i replaced by [MASK]; each copy goes through the
text encoder (the masked, text-only pass, as the reference feeds `input_ids_masked`), and the MLM head is run at
the masked position only. The per-token log-probabilities of the original tokens come back per sentence. Copies
of many sentences are sorted by length and batched, each batch padded to a multiple of 16 tokens, so few shapes
compile.
"""

from __future__ import annotations

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


def masked_copies(sentences: Sequence[Sequence[int]]) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """Every masked copy as (sentence, position of its [MASK]), shortest sentences first so that batches of
    neighbours pad little; and per sentence a zero array to fill with each inner token's log-probability (the copy
    masking position i fills entry i - 1)."""
    copies = [(s, i) for s, ids in enumerate(sentences) for i in range(1, len(ids) - 1)]
    copies.sort(key=lambda c: len(sentences[c[0]]))
    return copies, [np.zeros(max(len(ids) - 2, 0), np.float64) for ids in sentences]


class PLLScorer:
    """`token_logprobs(params, sentences)`: natural-log probabilities of each original token, per sentence."""

    def __init__(self, model: FlavaForPreTraining, batch_size: int = 128, length_multiple: int = 16,
                 sharding: NamedSharding | None = None) -> None:
        self.batch_size, self.length_multiple, self.sharding = batch_size, length_multiple, sharding

        def logprobs(params: Any, ids: jax.Array, positions: jax.Array, targets: jax.Array) -> jax.Array:
            masked = ids.at[jnp.arange(ids.shape[0]), positions].set(MASK_ID)
            labels = jnp.full_like(ids, IGNORE_INDEX).at[jnp.arange(ids.shape[0]), positions].set(targets)
            out = model.apply({"params": params}, input_ids_masked=masked, attention_mask=(ids != PAD_ID),
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

    def token_logprobs(self, params: Any, sentences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sentence ([CLS] ... [SEP] ids), the log-probability of each inner token when it is masked."""
        copies, results = masked_copies(sentences)
        for start in range(0, len(copies), self.batch_size):
            chunk = copies[start:start + self.batch_size]
            longest = max(len(sentences[s]) for s, _ in chunk)
            length = -(-longest // self.length_multiple) * self.length_multiple
            ids = np.full((self.batch_size, length), PAD_ID, np.int32)
            positions = np.ones(self.batch_size, np.int32)
            targets = np.zeros(self.batch_size, np.int32)
            for row, (s, i) in enumerate(chunk):
                ids[row, :len(sentences[s])] = sentences[s]
                positions[row], targets[row] = i, sentences[s][i]
            values = np.asarray(self._logprobs(params, *(self._place(x) for x in (ids, positions, targets))))
            for row, (s, i) in enumerate(chunk):
                results[s][i - 1] = values[row]
        return results


def pseudo_perplexity(logprobs: Sequence[np.ndarray]) -> dict[str, float]:
    """The reference's PPPL (exp of the mean over texts of each text's mean NLL, paper §5.2) and the token-weighted
    one (exp of total NLL over total tokens); texts without inner tokens are left out."""
    scored = [lp for lp in logprobs if len(lp)]
    if not scored:
        return {"pppl": float("nan"), "pppl_token_weighted": float("nan")}
    mean_nll = float(np.mean([-lp.mean() for lp in scored]))
    token_nll = float(-np.sum([lp.sum() for lp in scored]) / sum(len(lp) for lp in scored))
    return {"pppl": math.exp(mean_nll), "pppl_token_weighted": math.exp(token_nll)}
