"""Pseudo-log-likelihoods with transformers' FlavaForPreTraining (PyTorch), on an export.

The reference's algorithm (Salazar et al. 2020, paper_reference.md §5.1): for a sentence [CLS] t_1 ... t_n [SEP],
n copies each with one t_i replaced by [MASK] go through the text encoder (the masked, text-only pass), and the
log-probability of t_i under the MLM head is read at the masked position. Here the copies of many sentences are
sorted by length and packed into batches of about `batch_tokens` tokens, padded only to the longest copy in the
batch, and the MLM head runs at the masked positions only.
"""

from __future__ import annotations

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


class TorchPLL:
    """`token_logprobs(sentences)`: the natural-log probability of each inner token of each tokenised sentence."""

    def __init__(self, model: Any, mask_id: int, pad_id: int, batch_tokens: int = 8192,
                 progress: Any = None) -> None:
        self.model, self.mask_id, self.pad_id = model, mask_id, pad_id
        self.batch_tokens, self.progress = batch_tokens, progress

    def token_logprobs(self, sentences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        import torch

        device = next(self.model.parameters()).device
        copies, results = masked_copies(sentences)
        start = 0
        with torch.inference_mode():
            while start < len(copies):
                # Sorted by length: the batch's last copy is its longest; fill up to the token budget.
                end = start + 1
                while end < len(copies) and (end - start + 1) * len(sentences[copies[end][0]]) <= self.batch_tokens:
                    end += 1
                chunk = copies[start:end]
                length = len(sentences[chunk[-1][0]])
                ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)
                for row, (s, _) in enumerate(chunk):
                    ids[row, :len(sentences[s])] = torch.as_tensor(sentences[s])
                rows = torch.arange(len(chunk))
                positions = torch.as_tensor([i for _, i in chunk])
                targets = ids[rows, positions].clone()
                ids[rows, positions] = self.mask_id
                ids, mask = ids.to(device), (ids != self.pad_id).long().to(device)
                states = self.model.flava.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = self.model.mlm_head(states[rows.to(device), positions.to(device)])
                values = torch.log_softmax(logits.float(), dim=-1).gather(1, targets.to(device)[:, None])[:, 0]
                for (s, i), value in zip(chunk, values.cpu().numpy().astype(np.float64), strict=True):
                    results[s][i - 1] = value
                if self.progress is not None:
                    self.progress(len(chunk))
                start = end
        return results
