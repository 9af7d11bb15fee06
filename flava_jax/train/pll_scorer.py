"""Pseudo-log-likelihoods in JAX, for BLiMP and pseudo-perplexity during training: the masked copies of
`common.pll` through the text encoder (the masked, text-only pass, as the reference feeds `input_ids_masked`), the
MLM head run at the masked position only. Copies are batched shortest first, each batch padded to a multiple of 16
tokens, so few shapes compile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from flava_jax.common.pll import masked_copies
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.model.losses import IGNORE_INDEX


class PLLScorer:
    """`token_logprobs(params, sentences)`: natural-log probabilities of each original token, per sentence."""

    def __init__(self, model: FlavaForPreTraining, mask_id: int, pad_id: int, batch_size: int = 128,
                 length_multiple: int = 16, sharding: NamedSharding | None = None) -> None:
        self.batch_size, self.length_multiple, self.sharding = batch_size, length_multiple, sharding
        self.mask_id, self.pad_id = mask_id, pad_id

        def logprobs(params: Any, masked: jax.Array, positions: jax.Array, targets: jax.Array) -> jax.Array:
            labels = jnp.full_like(masked, IGNORE_INDEX).at[jnp.arange(masked.shape[0]), positions].set(targets)
            out = model.apply({"params": params}, input_ids_masked=masked, attention_mask=(masked != pad_id),
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
        copies = masked_copies(sentences, self.pad_id, words)
        values = np.zeros(len(copies), np.float64)
        for start in range(0, len(copies), self.batch_size):
            stop = min(start + self.batch_size, len(copies))
            length = -(-copies.longest(start, stop) // self.length_multiple) * self.length_multiple
            # Fixed batch shape: padding rows are all [PAD], scored at position 1, and dropped.
            padding = ((0, self.batch_size - (stop - start)),)
            ids, positions, targets = copies.batch(start, stop, length, self.mask_id)
            inputs = (np.pad(ids, padding + ((0, 0),), constant_values=self.pad_id).astype(np.int32),
                      np.pad(positions, padding, constant_values=1).astype(np.int32),
                      np.pad(targets, padding).astype(np.int32))
            out = np.asarray(self._logprobs(params, *(self._place(x) for x in inputs)))
            values[start:stop] = out[:stop - start]
        return copies.per_sentence(values)
