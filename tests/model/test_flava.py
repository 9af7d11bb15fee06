"""flava_jax.FlavaForPreTraining against transformers' FlavaForPreTraining with the same weights and inputs.

Every loss, logit and embedding agrees to 1e-5 relative (f32), and the gradient of the total loss to 1e-4
relative for every parameter, over several tiny shapes and every batch type the study uses.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flava_jax import FlavaConfig, FlavaForPreTraining
from flava_jax.model.hf_io import _hf_name, hf_name_table
from flava_jax.model.layers import unstack_layers
from tests.batches import image_batch, pair_batch, text_batch
from tests.hf_reference import flax_params, hf_grads, hf_model, to_torch, torch

LOSSES = ("mim", "mlm", "itm", "global_contrastive", "mmm_image", "mmm_text")
TINY = FlavaConfig.from_preset("tiny")
_WIDE = dict(hidden_size=48, num_attention_heads=6, intermediate_size=64)
CONFIGS = {
    "tiny": TINY,
    # Other head counts and depths, 3x3 patches, no QKV bias in the text encoder, one block per codebook group.
    "wide": TINY.replace(
        hidden_size=48, projection_dim=24,
        text_config=dict(_WIDE, num_hidden_layers=1, vocab_size=300, max_position_embeddings=40, qkv_bias=False),
        image_config=dict(_WIDE, num_hidden_layers=3, image_size=48, patch_size=16, vocab_size=32),
        multimodal_config=dict(_WIDE, num_hidden_layers=2),
        image_codebook_config=dict(hidden_size=4, vocab_size=32, num_blocks_per_group=1)),
    # Head size 16: sqrt(head_dim) is a power of two, so attention scales the query instead of the scores.
    "pow2": TINY.replace(hidden_size=64, text_config=dict(hidden_size=64), image_config=dict(hidden_size=64),
                         multimodal_config=dict(hidden_size=64)),
    # Other activations and LayerNorm eps, as HF's ACT2FN defines them.
    "act": TINY.replace(text_config=dict(hidden_act="gelu_new", layer_norm_eps=1e-5),
                        image_config=dict(hidden_act="quick_gelu"),
                        multimodal_config=dict(hidden_act="relu", layer_norm_eps=1e-6)),
}


def _batch(config: FlavaConfig, case: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs, extra forward kwargs) for one batch type."""
    rng = np.random.default_rng(seed)
    if case == "pairs":
        return pair_batch(config, rng, 6, 12, itm_labels=[1, 0, 1, 1, 0, 1]), {}
    if case == "pairs_mim_labels":  # labels given, not computed by the codebook
        batch = pair_batch(config, rng, 4, 10, itm_labels=[1, 1, 0, 1])
        batch["mim_labels"] = rng.integers(0, config.image_config.vocab_size, (4, config.image_config.num_patches))
        return batch, {}
    if case == "pairs_all_negative":  # HF then treats every pair as positive
        return pair_batch(config, rng, 3, 9, itm_labels=[0, 0, 0]), {}
    if case == "pairs_no_itm_labels":
        return pair_batch(config, rng, 3, 9), {}
    if case == "pairs_unmasked_mm":  # also run the unmasked multimodal encoder
        return pair_batch(config, rng, 3, 9, itm_labels=[1, 0, 1]), {"skip_unmasked_multimodal_encoder": False}
    if case == "text":
        return text_batch(config, rng, 5, 14), {}
    if case == "image":
        return image_batch(config, rng, 5), {}
    if case == "image_unmasked":  # inference on whole images: logits over all positions, no loss
        return image_batch(config, rng, 3, masked=False), {"return_loss": False}
    if case == "text_unlabelled":
        batch = text_batch(config, rng, 3, 10)
        del batch["mlm_labels"]
        return batch, {"return_loss": False}
    raise ValueError(case)


def _close(name: str, ours: Any, ref: Any, rtol: float) -> None:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref.detach().numpy() if hasattr(ref, "detach") else ref, np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    err, scale = np.abs(ours - ref).max(initial=0.0), np.abs(ref).max(initial=0.0)
    assert err <= rtol * scale, f"{name}: max |ours - ref| = {err:.3g} > {rtol} * max |ref| = {rtol * scale:.3g}"


def compare_outputs(ours: Any, ref: Any, rtol: float = 1e-5) -> None:
    """Losses, logits and embeddings of a flava_jax output against an HF output."""
    for name in LOSSES:
        a, b = getattr(ours.loss_info, name), getattr(ref.loss_info, name)
        assert (a is None) == (b is None), f"loss {name}: ours {a}, reference {b}"
        if b is not None:
            _close(f"loss {name}", a, b, rtol)
    assert (ours.loss is None) == (ref.loss is None)
    if ref.loss is not None:
        _close("total loss", ours.loss, ref.loss, rtol)

    pos = None if ours.pos_mask is None else np.asarray(ours.pos_mask)
    for name in ("mim", "mlm", "mmm_image", "mmm_text"):
        a, b = getattr(ours, f"{name}_logits"), getattr(ref, f"{name}_logits")
        assert (a is None) == (b is None), f"{name}_logits presence differs"
        if b is not None:
            mask = getattr(ours, f"{name}_logits_mask")
            _close(f"{name}_logits", np.asarray(a)[np.asarray(mask)] if mask is not None else a, b, rtol)
    row_filtered = ("contrastive_logits_per_image", "contrastive_logits_per_text", "multimodal_masked_embeddings")
    for name in ("itm_logits", "image_embeddings", "text_embeddings", "multimodal_embeddings",
                 "image_masked_embeddings", "text_masked_embeddings") + row_filtered:
        a, b = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (b is None), f"{name} presence differs: ours {a is not None}, reference {b is not None}"
        if b is not None:
            _close(name, np.asarray(a)[pos] if (name in row_filtered and pos is not None) else a, b, rtol)
    for name in ("text_output", "image_output", "multimodal_masked_output"):
        a, b = getattr(ours, name), getattr(ref, name)
        if b is not None:  # HF filters only the multimodal embeddings by pos_mask, not this output
            _close(f"{name}.pooler_output", a.pooler_output, b.pooler_output, rtol)


def compare_grads(config: FlavaConfig, grads: Any, reference: dict[str, np.ndarray | None], rtol: float = 1e-4,
                  floor: float = 1e-6) -> None:
    """Per-parameter gradients: ||ours - HF|| <= rtol ||HF|| + floor * max_p ||HF_p||; exactly 0 where torch has none.

    The floor is f32 rounding, 1e-6 of the largest parameter gradient. It matters only where the true gradient
    is zero or a sum that cancels: the attention key biases (softmax ignores a per-row shift; both frameworks give
    ~1e-10 noise) and, on random weights, the logit scale. `test_gradients_exact_in_float64` checks those without
    any floor.
    """
    flat = flatten_dict(unstack_layers(grads))
    largest = max(np.linalg.norm(g) for g in reference.values() if g is not None)
    bad = []
    for name, (path, shape) in hf_name_table(config).items():
        _, to_hf, _ = _hf_name(path, len(shape))
        ours = to_hf(np.asarray(flat[path], np.float64))
        ref = reference[name]
        if ref is None:
            if np.any(ours != 0):
                bad.append(f"{name}: torch has no gradient, ours has max {np.abs(ours).max():.3g}")
            continue
        err, scale = np.linalg.norm(ours - ref), np.linalg.norm(ref)
        if err > rtol * scale + floor * largest:
            bad.append(f"{name}: |ours - HF| {err:.3g}, |HF| {scale:.3g}")
    assert not bad, "gradients differ:\n" + "\n".join(bad)


def jitted(config: FlavaConfig, batch: dict[str, Any], **kwargs: Any) -> tuple[Any, Any]:
    """(forward, value_and_grad) of flava_jax in HF's training mode, jitted (eager Flax is far slower here)."""
    model = FlavaForPreTraining(config)
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}

    def forward(params: Any) -> Any:
        return model.apply({"params": params}, **inputs, **kwargs, deterministic=False)

    def loss_and_output(params: Any) -> tuple[jax.Array, Any]:
        out = forward(params)
        return out.loss, out

    return jax.jit(forward), jax.jit(jax.value_and_grad(loss_and_output, has_aux=True))


def run_both(config: FlavaConfig, case: str, grads: bool = True, seed: int = 0) -> None:
    """Same weights, same batch: flava_jax against HF on every output and (with a loss) every gradient."""
    model = hf_model(config, seed=seed)
    params = flax_params(config, model)
    batch, kwargs = _batch(config, case, seed)
    ref = model(**to_torch(batch), **kwargs)
    forward, value_and_grad = jitted(config, batch, **kwargs)
    if grads and ref.loss is not None:
        (_, ours), flax_grads = value_and_grad(params)
        compare_outputs(ours, ref)
        ref.loss.backward()
        compare_grads(config, flax_grads, hf_grads(config, model))
    else:
        compare_outputs(forward(params), ref)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("case", ["pairs", "text", "image"])
def test_parity_by_shape(config_name: str, case: str) -> None:
    """Each tiny shape on the three batch types: losses, logits, embeddings and every gradient."""
    run_both(CONFIGS[config_name], case)


@pytest.mark.parametrize("case", ["pairs_mim_labels", "pairs_all_negative", "pairs_no_itm_labels",
                                  "pairs_unmasked_mm", "image_unmasked", "text_unlabelled"])
@pytest.mark.slow
def test_parity_by_case(case: str) -> None:
    run_both(TINY, case)


@pytest.mark.slow
def test_unmasked_images_with_pair_losses() -> None:
    """Pairs with whole images: ITM, MMM-text and contrastive still train when MMM-image is off.

    HF cannot run this without a patch mask (it indexes bool_masked_pos), so the reference gets an all-False mask,
    which leaves every patch embedding bit-identical; flava_jax gets no mask at all.
    """
    config = TINY.replace(mmm_image_weight=0.0)
    model = hf_model(config, seed=1)
    batch = pair_batch(config, np.random.default_rng(1), 4, 10, itm_labels=[1, 0, 1, 1], masked_images=False)
    ref = model(**to_torch(batch), bool_masked_pos=torch.zeros(4, config.image_config.num_patches, dtype=torch.bool))
    (_, ours), grads = jitted(config, batch)[1](flax_params(config, model))
    compare_outputs(ours, ref)
    assert ours.mim_labels is None  # no loss needed the codebook, so it did not run
    ref.loss.backward()
    compare_grads(config, grads, hf_grads(config, model))


@pytest.mark.slow
def test_multimodal_attention_mask_switch() -> None:
    """On: HF 5.x (text padding masked in the multimodal encoder). Off, the default: the paper's HF 4.29."""
    on = TINY.replace(multimodal_attention_mask=True)
    run_both(on, "pairs")  # the reference is HF 5.x unmodified
    run_both(TINY, "pairs")  # the reference drops the multimodal mask
    # The switch matters: with padding present the two settings give different multimodal losses.
    model = hf_model(TINY)
    params = flax_params(TINY, model)
    batch = _batch(TINY, "pairs")[0]
    off_loss = jitted(TINY, batch)[0](params).loss_info.mmm_text
    on_loss = jitted(on, batch)[0](params).loss_info.mmm_text
    assert abs(float(off_loss) - float(on_loss)) > 1e-4


@pytest.mark.parametrize("switches", [dict(scan_layers=True), dict(remat_policy="nothing_saveable"),
                                      dict(scan_layers=True, remat_policy="dots_saveable")])
@pytest.mark.slow
def test_scan_and_remat_keep_parity(switches: dict[str, Any]) -> None:
    """Scanning layers or rematerialising them changes the schedule, never the numbers."""
    run_both(TINY.replace(**switches), "pairs")


@pytest.mark.slow
def test_bf16_compute_policy() -> None:
    """bf16 compute with f32 parameters: close to the f32 reference, parameters and losses stay f32."""
    config = TINY.replace(dtype="bfloat16")
    model = hf_model(config)
    params = flax_params(config, model)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    batch, _ = _batch(config, "pairs")
    ref = model(**to_torch(batch))
    ours = jitted(config, batch)[0](params)
    assert ours.text_embeddings.dtype == jnp.bfloat16
    assert ours.loss.dtype == jnp.float32
    for name in ("itm", "global_contrastive", "mmm_image", "mmm_text"):
        _close(f"bf16 {name}", getattr(ours.loss_info, name), getattr(ref.loss_info, name), 3e-2)


@pytest.mark.slow
def test_mask_capacity_gathers_the_same_positions() -> None:
    """The gathered (capacity) path scores exactly HF's positions; a too-small capacity reports what it dropped."""
    config = TINY
    model = hf_model(config)
    params = flax_params(config, model)
    batch, _ = _batch(config, "pairs")
    ref = model(**to_torch(batch))
    n_text = int((batch["mlm_labels"] != -100).sum(1).max())
    n_image = int(batch["bool_masked_pos"].sum(1).max())
    ours = jitted(config, batch, text_mask_capacity=n_text, image_mask_capacity=n_image)[0](params)
    compare_outputs(ours, ref)
    assert ours.mmm_text_logits.shape[:2] == (6, n_text)
    assert int(ours.metrics["mmm_text"]["dropped"]) == 0

    small = jitted(config, batch, text_mask_capacity=1)[0](params)
    positives = np.asarray(small.pos_mask)
    labelled = (batch["mlm_labels"] != -100)[positives]
    assert int(small.metrics["mmm_text"]["dropped"]) == int(labelled.sum() - (labelled.sum(1) > 0).sum())
    # With capacity 1 the loss is the mean CE at each positive row's first labelled token, from HF's logits.
    first = np.argmax(labelled, axis=1)
    ref_logits = torch.log_softmax(ref.mmm_text_logits, -1).detach().numpy()
    offsets = np.concatenate([[0], np.cumsum(labelled.sum(1))[:-1]])
    targets = batch["mlm_labels"][positives][np.arange(len(first)), first]
    expected = -ref_logits[offsets, targets].mean()
    _close("capacity-1 mmm_text", small.loss_info.mmm_text, expected, 1e-5)


@pytest.mark.parametrize("config_name", ["tiny", "pow2", "act"])
def test_gradients_exact_in_float64(config_name: str) -> None:
    """In float64 both implementations agree to 1e-9 on every gradient, the logit scale's included."""
    config = CONFIGS[config_name].replace(dtype="float64", param_dtype="float64")
    model = hf_model(config).double()
    batch, _ = _batch(config, "pairs")
    with jax.enable_x64(True):
        params = flax_params(config, model)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
        inputs = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in batch.items()}
        ref = model(**to_torch(inputs))
        (_, ours), grads = jitted(config, inputs)[1](params)
        compare_outputs(ours, ref, rtol=1e-12)
        ref.loss.backward()
        compare_grads(config, grads, hf_grads(config, model), rtol=1e-9, floor=1e-14)
