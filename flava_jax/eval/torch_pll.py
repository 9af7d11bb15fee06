"""Pseudo-log-likelihoods with transformers' FlavaForPreTraining (PyTorch), on an export.

The reference's algorithm (Salazar et al. 2020, docs/reference.md#blimp): for a sentence [CLS] t_1 ... t_n [SEP],
n copies each with one t_i replaced by [MASK] go through the text encoder (the masked, text-only pass), and the
log-probability of t_i under the MLM head is read at the masked position. Here the copies of many sentences are
sorted by length and packed into batches of about `batch_tokens` tokens, padded only to the longest copy in the
batch. Three things make it faster than running HF's forward on each copy, none of which changes a score:

* the first layer's query/key/value projections: a copy differs from its sentence only at its masked tokens, so
  they are computed once per sentence and once for [MASK] at each position, and each copy picks its rows;
* the last layer's queries, feed-forward and final LayerNorm, and the MLM head run only at the scored position;
* attention runs as one fused query/key/value projection and `scaled_dot_product_attention`; the big activations
  go to buffers reused from batch to batch, with biases and residuals accumulated in place: fresh ones are
  slow on CPU, where each large allocation comes back from the OS as new pages to fault in.

benchmarks/eval.py measures what this buys over the reference's way; tests/eval/test_evaluate.py checks the scores
against HF's whole forward.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from flava_jax.common.pll import masked_copies

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


class BadExport(ValueError):
    """An export that cannot be evaluated; the message says why and what to do."""


def torch_device(name: str) -> str:
    """`name` checked against what this torch can use ("auto": CUDA where torch has it, else the CPU); BadExport's
    sibling ValueError in one line otherwise, before any model is loaded."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device={name} is not a torch device (cpu, cuda, cuda:1, mps, auto): {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={name}: this torch has no CUDA (a CPU build, or no GPU or driver); use "
                         f"--device=cpu or --device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device={name}: torch sees {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device={name}: MPS is not available to this torch")
    return name


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
    try:
        model = transformers.FlavaForPreTraining.from_pretrained(path, use_safetensors=True).to(device).eval()
    except SafetensorError as e:
        raise BadExport(f"{path}: a weights file is not complete safetensors ({e}), probably cut short while being "
                        "written or copied; export the run again") from e
    vocab = model.config.text_config.vocab_size
    if len(tokenizer) > vocab or tokenizer.mask_token_id is None or tokenizer.mask_token_id >= vocab:
        raise BadExport(f"{path}: the tokenizer ({len(tokenizer)} tokens, [MASK] = {tokenizer.mask_token_id}) does "
                          f"not match the model's text vocabulary of {vocab}; export the tokenizer the run trained "
                          f"with")
    return model, tokenizer


def word_ids(tokenizer: Any, texts: Sequence[str], sentences: Sequence[Sequence[int]]) -> list[list[int | None]]:
    """Per text, each token's word in its `sentences` entry (= tokenizer(text)'s ids), None for special tokens, for
    within-word-l2r.

    Words are the tokenizer's own (its fast `word_ids()`): for a SentencePiece export, the whitespace-separated
    words; for WordPiece, BERT's pre-tokenization, which also splits off punctuation ("dog." is two words), as
    BERT-based within-word-l2r scorers do. Exports written before SentencePiece exports split words (their
    word_ids() put every token in word 0) are read on the text split at whitespace instead, which gives the same
    words. Raises ValueError when that gives other ids, so the scored tokens are always the paper's."""
    # Which way is read once per call: the check serialises the whole tokenizer, thousands of times an encode.
    encoded = tokenizer([t.split() for t in texts], is_split_into_words=True) if _joins_words(tokenizer) \
        else tokenizer(list(texts))
    for text, ids, got in zip(texts, sentences, encoded["input_ids"], strict=True):
        if list(got) != list(ids):
            raise ValueError(f"within-word-l2r: this tokenizer gives other tokens for {text!r} split into words, so "
                             f"its word boundaries cannot be read; use --pll=original")
    return [encoded.word_ids(i) for i in range(len(texts))]


def _joins_words(tokenizer: Any) -> bool:
    """Whether a fast tokenizer's pre-tokenizer is a Metaspace that does not split words (exports before the fix)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = json.loads(backend.to_str()).get("pre_tokenizer") if backend is not None else None
    return bool(pre) and pre.get("type") == "Metaspace" and pre.get("split") is False


class TorchPLL:
    """`token_logprobs(sentences)`: the natural-log probability of each inner token of each tokenised sentence,
    from an eval-mode FlavaForPreTraining. `batch_tokens`: tokens per batch, padding included; by default 2048 on
    CPU, where batches whose activations stay in cache run fastest, and 32768 on accelerators, which want big
    batches."""

    def __init__(self, model: Any, mask_id: int, pad_id: int, batch_tokens: int | None = None,
                 progress: Any = None) -> None:
        import torch

        self.model, self.mask_id, self.pad_id = model, mask_id, pad_id
        self.batch_tokens, self.progress = batch_tokens, progress
        # Each layer's query, key and value projections as one (3 x hidden, hidden) matrix and bias (zeros when the
        # model has no query/key/value bias).
        self._qkv = []
        for layer in model.flava.text_model.encoder.layer:
            projections = [getattr(layer.attention.attention, name) for name in ("query", "key", "value")]
            weight = torch.cat([p.weight for p in projections]).detach()
            bias = (torch.cat([p.bias for p in projections]).detach() if projections[0].bias is not None
                    else weight.new_zeros(len(weight)))
            self._qkv.append((weight, bias))
        self._buffer = None  # grows to the largest batch

    def token_logprobs(self, sentences: Sequence[Sequence[int]],
                       words: Sequence[Sequence[int | None]] | None = None) -> list[np.ndarray]:
        """Per sentence, each inner token's log-probability when masked (with the rest of its word to the right
        when `words`, per sentence each token's word index, is given: within-word-l2r, see
        `common.pll.masked_copies`)."""
        import torch

        device = next(self.model.parameters()).device
        budget = self.batch_tokens or (2048 if device.type == "cpu" else 32768)
        copies = masked_copies(sentences, self.pad_id, words)
        longest = copies.lengths[copies.copies[:, 0]]  # per copy; non-decreasing
        values = np.zeros(len(copies), np.float64)
        start = 0
        with torch.inference_mode():
            while start < len(copies):
                # The most copies that fit the token budget padded to their longest (at least one).
                stop = max(bisect.bisect_right(range(start + 1, len(copies) + 1), budget,
                                               key=lambda end: (end - start) * longest[end - 1]) + start, start + 1)
                length = copies.longest(start, stop)
                ids, positions, targets = copies.batch(start, stop, length, self.mask_id)
                sentence, inverse = np.unique(copies.copies[start:stop, 0], return_inverse=True)
                originals = copies.padded[sentence, :length]
                masked = ids != originals[inverse]
                states = self._final_states_at(
                    *(torch.from_numpy(x).to(device) for x in (originals, inverse, masked, positions)))
                logits = self.model.mlm_head(states)
                values[start:stop] = torch.log_softmax(logits.float(), dim=-1).gather(
                    1, torch.from_numpy(targets).to(device)[:, None])[:, 0].cpu().numpy()
                if self.progress is not None:
                    self.progress(stop - start)
                start = stop
        return copies.per_sentence(values)

    def _final_states_at(self, originals: Any, owner: Any, masked: Any, positions: Any) -> Any:
        """The text encoder's final states (after its last LayerNorm) at `positions` of the copies of `originals`
        (the sentences, (sentences, length) ids) whose row `owner` copies, with the tokens `masked` (copies, length)
        replaced by [MASK]: what HF's whole forward gives there (tests/eval/test_evaluate.py)."""
        import torch

        text = self.model.flava.text_model
        copies, length = masked.shape
        d = self._qkv[0][0].shape[1]
        hidden, spare, projected, intermediate = self._buffers(
            copies * length, (d, d, 3 * d, text.encoder.layer[0].intermediate.dense.out_features))
        hidden, projected = hidden.view(copies, length, d), projected.view(copies, length, 3 * d)
        # The embeddings and the first layer's projections of the sentences and of [MASK] at every position; each
        # copy takes its sentence's rows except at its masked tokens.
        embedded = text.embeddings(input_ids=torch.cat([originals, torch.full_like(originals[:1], self.mask_id)]))
        shared = torch.nn.functional.linear(text.encoder.layer[0].layernorm_before(embedded), *self._qkv[0])
        masked = masked[:, :, None]
        torch.where(masked, embedded[-1], embedded[owner], out=hidden)
        torch.where(masked, shared[-1], shared[owner], out=projected)
        # Pad keys are left out of attention as HF's additive mask does (its exp() is exactly 0).
        keep = (originals != self.pad_id)[owner][:, None, None, :]
        rows = torch.arange(copies, device=masked.device)
        for index, (layer, (weight, bias)) in enumerate(zip(text.encoder.layer, self._qkv, strict=True)):
            if index < len(self._qkv) - 1:
                if index:
                    torch.addmm(bias, layer.layernorm_before(hidden).flatten(0, 1), weight.t(),
                                out=projected.view(-1, 3 * d))
                hidden = _rest_of_layer(layer, *_heads(layer, projected), hidden, keep, spare, intermediate)
                continue
            # The last layer: keys and values of every token, the rest at the scored position only.
            if index:
                x = layer.layernorm_before(hidden)
                query = torch.nn.functional.linear(x[rows, positions, None], weight[:d], bias[:d])
                keys_values = torch.nn.functional.linear(x, weight[d:], bias[d:])
            else:
                query, keys_values = projected[rows, positions, None, :d], projected[..., d:]
            hidden = _rest_of_layer(layer, *_heads(layer, query), *_heads(layer, keys_values),
                                    hidden[rows, positions, None], keep)
        return text.layernorm(hidden[:, 0])

    def _buffers(self, tokens: int, widths: Sequence[int]) -> list[Any]:
        """Flat (tokens, width) buffers for a batch's activations, views into one allocation that is kept."""
        needed = tokens * sum(widths)
        if self._buffer is None or self._buffer.numel() < needed:
            weight = self._qkv[0][0]
            self._buffer = weight.new_empty(needed)
        offsets = np.cumsum([0, *(tokens * w for w in widths)]).tolist()
        return [self._buffer[a:b].view(tokens, w) for a, b, w in zip(offsets, offsets[1:], widths, strict=False)]


def _heads(layer: Any, projected: Any) -> Any:
    """(rows, length, k x hidden) projections as k (rows, heads, length, head size) tensors."""
    attention = layer.attention.attention
    return projected.unflatten(-1, (-1, attention.num_attention_heads, attention.attention_head_size)).permute(
        2, 0, 3, 1, 4)


def _rest_of_layer(layer: Any, query: Any, key: Any, value: Any, hidden: Any, keep: Any, spare: Any = None,
                   intermediate: Any = None) -> Any:
    """One pre-LayerNorm encoder layer of HF's from its query/key/value projections on: attention (keys where
    `keep`), output projection, residual, feed-forward, residual. The result overwrites `hidden` (rows, queries,
    hidden), which must be contiguous; `spare` (rows x queries, hidden) and `intermediate` are buffers for the
    residual stream after attention and the feed-forward's inner activations (allocated when None)."""
    import torch

    rows, queries, d = hidden.shape
    context = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keep)
    dense = layer.attention.output.dense
    attended = torch.add(hidden.view(-1, d), dense.bias, out=spare)
    attended.addmm_(context.transpose(1, 2).reshape(-1, d), dense.weight.t())
    inner, outer = layer.intermediate.dense, layer.output.dense
    activated = torch.addmm(inner.bias, layer.layernorm_after(attended), inner.weight.t(), out=intermediate)
    act = layer.intermediate.intermediate_act_fn
    if getattr(act, "act", None) is torch.nn.functional.gelu:  # HF's exact "gelu": in place, saves a buffer
        torch.ops.aten.gelu_(activated)
    else:
        activated = act(activated)
    out = torch.add(attended, outer.bias, out=hidden.view(-1, d))
    return out.addmm_(activated, outer.weight.t()).view(rows, queries, d)
