"""Pseudo-log-likelihoods with transformers' FlavaForPreTraining (PyTorch), on an export.

The reference's algorithm (Salazar et al. 2020, paper_reference.md §5.1): for a sentence [CLS] t_1 ... t_n [SEP],
n copies each with one t_i replaced by [MASK] go through the text encoder (the masked, text-only pass), and the
log-probability of t_i under the MLM head is read at the masked position. Here the copies of many sentences are
sorted by length and packed into batches of about `batch_tokens` tokens, padded only to the longest copy in the
batch; the last encoder layer and the MLM head run at the masked positions only, the one place a score is read
(benchmarks/eval.py measures what this buys over the reference's way; tests/test_evaluate.py checks the scores
against HF's whole forward).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flava_jax.pll import masked_copies

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


class BadExport(ValueError):
    """An export that cannot be evaluated; the message says why and what to do."""


def load_export(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of an export: weights from safetensors only (never a pickle), the tokenizer beside them,
    checked to fit the model's vocabulary."""
    import transformers

    path = Path(path)
    if not path.is_dir():
        raise BadExport(f"{path} is not a directory; export a run with python -m flava_jax.export")
    if not any((path / name).is_file() for name in SAFETENSORS):
        raise BadExport(f"{path} has no model.safetensors (pickled checkpoints are never loaded); re-export it with "
                          f"python -m flava_jax.export, or convert it with flava_jax.save_pretrained")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise BadExport(f"{path} has no loadable tokenizer ({e}); export with python -m flava_jax.export, which "
                          f"writes the run's tokenizer") from e
    model = transformers.FlavaForPreTraining.from_pretrained(path, use_safetensors=True).to(device).eval()
    vocab = model.config.text_config.vocab_size
    if len(tokenizer) > vocab or tokenizer.mask_token_id is None or tokenizer.mask_token_id >= vocab:
        raise BadExport(f"{path}: the tokenizer ({len(tokenizer)} tokens, [MASK] = {tokenizer.mask_token_id}) does "
                          f"not match the model's text vocabulary of {vocab}; export the tokenizer the run trained "
                          f"with")
    return model, tokenizer


def word_ids(tokenizer: Any, text: str, ids: Sequence[int]) -> list[int | None]:
    """Each token's word in `ids` (= tokenizer(text)'s ids), None for special tokens, for within-word-l2r.

    Words are the text's whitespace-separated words, read from the fast tokenizer's `word_ids()` on the text split
    at whitespace: the exported SentencePiece tokenizer does not split words itself (its word_ids() puts the whole
    sentence in word 0), and a WordPiece one would also split off punctuation. Raises ValueError when the split
    text tokenises to other ids, so the scored tokens are always the paper's."""
    encoded = tokenizer(text.split(), is_split_into_words=True)
    if list(encoded["input_ids"]) != list(ids):
        raise ValueError(f"within-word-l2r: this tokenizer gives other tokens for {text!r} split into words, so its "
                         f"word boundaries cannot be read; use --pll=original")
    return encoded.word_ids()


class TorchPLL:
    """`token_logprobs(sentences)`: the natural-log probability of each inner token of each tokenised sentence,
    from an eval-mode FlavaForPreTraining. `batch_tokens`: tokens per batch, padding included; by default 2048 on
    CPU, where batches whose activations stay in cache run about a quarter faster than 8192 (benchmarks/eval.py),
    and 32768 on accelerators, which want big batches (not measured here)."""

    def __init__(self, model: Any, mask_id: int, pad_id: int, batch_tokens: int | None = None,
                 progress: Any = None) -> None:
        self.model, self.mask_id, self.pad_id = model, mask_id, pad_id
        self.batch_tokens, self.progress = batch_tokens, progress

    def token_logprobs(self, sentences: Sequence[Sequence[int]],
                       words: Sequence[Sequence[int | None]] | None = None) -> list[np.ndarray]:
        """Per sentence, each inner token's log-probability when masked (with the rest of its word to the right
        when `words`, per sentence each token's word index, is given: within-word-l2r, see `pll.masked_copies`)."""
        import torch

        device = next(self.model.parameters()).device
        budget = self.batch_tokens or (2048 if device.type == "cpu" else 32768)
        copies = masked_copies(sentences, words)
        longest = copies.lengths[copies.copies[:, 0]]  # per copy; non-decreasing
        values = np.zeros(len(copies), np.float64)
        start = 0
        with torch.inference_mode():
            while start < len(copies):
                # The most copies that fit the token budget padded to their longest (at least one).
                stop = max(bisect.bisect_right(range(start + 1, len(copies) + 1), budget,
                                               key=lambda end: (end - start) * longest[end - 1]) + start, start + 1)
                ids, positions, targets = (torch.from_numpy(x).to(device) for x in
                                           copies.batch(start, stop, copies.longest(start, stop), self.mask_id))
                states = self._final_states_at(ids, ids != self.pad_id, positions)
                logits = self.model.mlm_head(states)
                values[start:stop] = torch.log_softmax(logits.float(), dim=-1).gather(
                    1, targets[:, None])[:, 0].cpu().numpy()
                if self.progress is not None:
                    self.progress(stop - start)
                start = stop
        return copies.per_sentence(values)

    def _final_states_at(self, ids: Any, mask: Any, positions: Any) -> Any:
        """The text encoder's final states (after its last LayerNorm) of each row at its position: every layer but
        the last over all tokens as HF runs them; the last one's attention queries, feed-forward and the final
        LayerNorm at those positions only (keys and values still from every token): what HF's whole forward gives
        at those positions, for a sixth (half size) to a half (tiny) less encoder work."""
        import torch

        text = self.model.flava.text_model
        hidden = text.embeddings(input_ids=ids)
        # The additive padding mask HF's eager attention adds to the scores: exp() of it is exactly 0.
        bias = (~mask[:, None, None, :]).to(hidden.dtype) * torch.finfo(hidden.dtype).min
        *layers, last = text.encoder.layer
        for layer in layers:
            hidden = layer(hidden, bias)[0]
        rows = torch.arange(len(ids), device=ids.device)
        x = last.layernorm_before(hidden)
        attention = last.attention.attention
        heads, size = attention.num_attention_heads, attention.attention_head_size
        query = attention.query(x[rows, positions]).view(len(ids), heads, 1, size)
        key, value = (project(x).view(len(ids), -1, heads, size).transpose(1, 2)
                      for project in (attention.key, attention.value))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size) + bias
        context = torch.matmul(scores.softmax(dim=-1), value).reshape(len(ids), heads * size)
        hidden = last.attention.output.dense(context) + hidden[rows, positions]
        return text.layernorm(last.output(last.intermediate(last.layernorm_after(hidden)), hidden))
