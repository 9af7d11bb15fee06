"""transformers' PyTorch FlavaForPreTraining as the numerical reference: build it, feed it, read its gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers (the eval extra)")

from flava_jax import FlavaConfig  # noqa: E402
from flava_jax.model.hf_io import from_hf_state_dict, hf_name_table  # noqa: E402


def hf_model(config: FlavaConfig, seed: int = 0, multimodal_attention_mask: bool | None = None) -> Any:
    """A randomly initialised HF FlavaForPreTraining in training mode (dropout is 0 in these configs).

    HF 5.x masks text padding inside the multimodal encoder; the paper's HF 4.29 did not. Unless told otherwise,
    the reference follows `config.multimodal_attention_mask`, dropping the mask with a pre-hook when it is off.
    """
    torch.manual_seed(seed)
    model = transformers.FlavaForPreTraining(transformers.FlavaConfig(**config.to_hf_dict()))
    model.train()
    if multimodal_attention_mask is None:
        multimodal_attention_mask = config.multimodal_attention_mask
    if not multimodal_attention_mask:
        def drop_mask(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return args, {**kwargs, "attention_mask": None}

        model.flava.multimodal_model.register_forward_pre_hook(drop_mask, with_kwargs=True)
    # Random, non-zero values for the parameters HF initialises to zero or one, so every term is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cls_token" in name or "mask_token" in name or "position_embeddings" in name or name.endswith(
                    "bias") or "LayerNorm" in name or "layernorm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


def flax_params(config: FlavaConfig, model: Any) -> dict[str, Any]:
    """The HF model's weights as Flax parameters for `config`."""
    return from_hf_state_dict(config, model.state_dict())


def to_torch(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def hf_grads(config: FlavaConfig, model: Any) -> dict[str, np.ndarray | None]:
    """HF weight name -> gradient (None where autograd left none), for the names flava_jax exports."""
    tensors = model.state_dict(keep_vars=True)
    return {name: None if tensors[name].grad is None else tensors[name].grad.double().numpy().copy()
            for name in hf_name_table(config)}
