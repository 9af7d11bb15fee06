"""from_pretrained / save_pretrained: bit-exact round trips both ways, what transformers loads, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from flava_jax import CheckpointError, FlavaConfig, from_pretrained, save_pretrained
from flava_jax.model.hf_io import _hf_name, hf_name_table, to_hf_state_dict
from flava_jax.model.layers import stack_layers
from tests.hf_reference import hf_model, torch, transformers

TINY = FlavaConfig.from_preset("tiny")


def _same_tree(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _hf_state(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_hf_to_flax_to_hf_is_bit_exact(tmp_path: Path) -> None:
    model = hf_model(TINY)
    model.save_pretrained(tmp_path / "hf")
    config, params = from_pretrained(tmp_path / "hf")
    assert config == TINY
    save_pretrained(config, params, tmp_path / "ours")
    original = load_file(tmp_path / "hf" / "model.safetensors")
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    assert sorted(original) == sorted(ours)
    for name in original:
        assert original[name].dtype == ours[name].dtype and original[name].shape == ours[name].shape, name
        assert original[name].tobytes() == ours[name].tobytes(), name

    reloaded, info = transformers.FlavaForPreTraining.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    before, after = _hf_state(model), _hf_state(reloaded)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].tobytes() == after[name].tobytes(), name


LAYOUTS = {
    "loop": ({}, lambda p: p),
    "scan": (dict(scan_layers=True), stack_layers),
    "bf16": (dict(param_dtype="bfloat16"), lambda p: jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_flax_to_hf_to_flax_is_bit_exact(tmp_path: Path, tiny_params: Any, layout: str) -> None:
    switches, convert = LAYOUTS[layout]
    config = TINY.replace(**switches)
    params = convert(tiny_params)
    save_pretrained(config, params, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "flava"
    loaded_config, loaded = from_pretrained(tmp_path, **switches)
    assert loaded_config == config
    _same_tree(params, loaded)
    # transformers loads it with nothing missing or left over.
    _, info = transformers.FlavaForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info


def test_random_init_follows_hf_init(tiny_params: Any) -> None:
    """Zeros, ones and constants where HF puts them; N(0, 0.02) elsewhere; the [PAD] embedding row zero."""
    state = to_hf_state_dict(TINY, tiny_params)
    for name, value in state.items():
        if "LayerNorm" in name or "layernorm" in name:
            assert (value == (1 if name.endswith("weight") else 0)).all(), name
        elif name.endswith((".bias", "cls_token", "mask_token", "image_model.embeddings.position_embeddings")):
            assert not value.any(), name
        elif name == "flava.logit_scale":
            assert value == np.float32(2.6592)
        else:
            assert abs(value.std() - 0.02) < 0.006 and abs(value.mean()) < 0.01, name
    assert not state["flava.text_model.embeddings.word_embeddings.weight"][0].any()


def test_pytorch_bin_from_compiled_model_with_old_keys(tmp_path: Path) -> None:
    """The paper's checkpoints: torch.compile'd submodules (`_orig_mod.`), tied head biases, position_ids."""
    model = hf_model(TINY)
    state = {}
    for name, value in model.state_dict().items():
        for sub in ("text_model", "image_model", "multimodal_model"):
            name = name.replace(f"flava.{sub}.", f"flava.{sub}._orig_mod.")
        state[name.replace("image_codebook.", "image_codebook._orig_mod.")] = value
    for head in ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head"):
        state[f"{head}.bias"] = model.state_dict()[f"{head}.decoder.bias"].clone()
    state["flava.text_model._orig_mod.embeddings.position_ids"] = torch.arange(128)[None]
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_hf_dict(), "compile_submodels": True}))
    torch.save(state, tmp_path / "pytorch_model.bin")
    config, params = from_pretrained(tmp_path)
    expected = from_pretrained_from_model(model, tmp_path / "ref")
    _same_tree(expected, params)


def from_pretrained_from_model(model: Any, directory: Path) -> Any:
    model.save_pretrained(directory)
    return from_pretrained(directory)[1]


def test_sharded_safetensors(tmp_path: Path) -> None:
    model = hf_model(TINY)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _same_tree(from_pretrained(tmp_path)[1], from_pretrained_from_model(model, tmp_path / "single"))


class Payload:
    """An arbitrary object: a plain unpickler would import and build it; weights_only loading must refuse."""


def test_pickle_is_never_unpickled(tmp_path: Path) -> None:
    torch.save({"flava.logit_scale": Payload()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    with pytest.raises(CheckpointError, match="weights_only"):
        from_pretrained(tmp_path)


def test_pickle_refusal_gives_safe_advice_in_one_line(tmp_path: Path) -> None:
    torch.save({"flava.logit_scale": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "pytorch_model.bin", config=TINY)
    message = str(err.value)
    assert "weights_only=False" not in message and "\n" not in message  # not torch's unsafe advice
    assert str(tmp_path / "pytorch_model.bin") in message and "safetensors.torch.save_file" in message


def test_truncated_safetensors_is_one_clear_line(tmp_path: Path) -> None:
    save_file({"flava.logit_scale": np.ones(64, np.float32)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a complete safetensors file") as err:
        from_pretrained(tmp_path)
    assert "\n" not in str(err.value)


def _write(tmp_path: Path, state: dict[str, np.ndarray]) -> Path:
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    return tmp_path


def test_missing_and_extra_weights_are_named(tmp_path: Path) -> None:
    state = _hf_state(hf_model(TINY))
    del state["flava.text_model.pooler.dense.weight"], state["mlm_head.bias"]  # the alias alone is fine
    state["flava.text_model.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(_write(tmp_path, state))
    message = str(err.value)
    assert "missing (1): flava.text_model.pooler.dense.weight" in message
    assert "unexpected (1): flava.text_model.extra.weight" in message


def test_wrong_shape_and_inconsistent_alias_are_named(tmp_path: Path) -> None:
    state = _hf_state(hf_model(TINY))
    state["flava.image_projection.weight"] = np.zeros((16, 31), np.float32)
    state["mlm_head.bias"] = state["mlm_head.decoder.bias"] + 1
    with pytest.raises(CheckpointError) as err:
        from_pretrained(_write(tmp_path, state))
    assert "flava.image_projection.weight is (16, 31), the config needs (16, 32)" in str(err.value)
    assert "mlm_head.bias differs from its tied mlm_head.decoder.bias" in str(err.value)


def test_export_of_a_wrong_tree_names_the_weight(tmp_path: Path, tiny_params: Any) -> None:
    params = jax.tree.map(lambda x: x, tiny_params)  # a copy of the containers
    del params["itm_head"]["seq_relationship"]["bias"]
    params["flava"]["stray"] = jnp.zeros(2)
    with pytest.raises(CheckpointError) as err:
        save_pretrained(TINY, params, tmp_path)
    assert "itm_head.seq_relationship.bias" in str(err.value) and "flava/stray" in str(err.value)
    assert not (tmp_path / "model.safetensors").exists()


def test_bare_file_needs_a_config(tmp_path: Path, tiny_params: Any) -> None:
    params = tiny_params
    save_file(to_hf_state_dict(TINY, params), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="pass config="):
        from_pretrained(tmp_path / "w.safetensors")
    _same_tree(params, from_pretrained(tmp_path / "w.safetensors", config=TINY)[1])
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("preset", ["full", "half"])
def test_every_hf_weight_maps_once_at_paper_sizes(preset: str) -> None:
    """The name table covers HF's full/half FlavaForPreTraining exactly: same names, same shapes."""
    config = FlavaConfig.from_preset(preset)
    with torch.device("meta"):
        reference = transformers.FlavaForPreTraining(transformers.FlavaConfig(**config.to_hf_dict()))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()
                if k not in ("mim_head.bias", "mlm_head.bias", "mmm_image_head.bias", "mmm_text_head.bias")}
    table = hf_name_table(config)
    assert sorted(table) == sorted(expected)
    for name, (path, shape) in table.items():
        _, to_hf, _ = _hf_name(path, len(shape))
        assert to_hf(np.broadcast_to(np.int8(0), shape)).shape == expected[name], name
    trainable = sum(int(np.prod(s)) for n, (_, s) in table.items() if not n.startswith("image_codebook"))
    codebook = sum(int(np.prod(s)) for n, (_, s) in table.items() if n.startswith("image_codebook"))
    # docs/reference.md#model-sizes: about 304M / 136M trainable and 53.8M frozen codebook parameters.
    assert abs(trainable / 1e6 - {"full": 304, "half": 136}[preset]) < 3
    assert abs(codebook / 1e6 - 53.8) < 0.1
