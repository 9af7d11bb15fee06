"""FLAVA model configuration: every size and setting, presets, and conversion to and from HF `FlavaConfig` dicts.

The field names and defaults are those of transformers' `FlavaConfig` and its four sub-configs, so a `config.json`
written by `transformers.FlavaForPreTraining.save_pretrained` converts losslessly, and the defaults are the model the
paper trained ("full"). A few run-time switches exist only here (compute dtype, remat, scan, the multimodal
attention mask); they change how the model runs, not its weights, so they are not written into HF dicts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax

from flava_jax.common.settings import ConfigError

log = logging.getLogger(__name__)

# Activations accepted for `hidden_act`, named as in transformers' ACT2FN.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish", "tanh")
DTYPES = ("float32", "bfloat16", "float16", "float64")  # float64 needs jax_enable_x64 (tests)
LOSS_NAMES = ("mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text")

# Keys HF writes into config.json that carry no model information here (bookkeeping, generation, legacy flags).
# Anything else unknown is rejected, so a typo or an unsupported FLAVA variant is never silently ignored.
_HF_BOOKKEEPING = frozenset(
    """
    architectures model_type transformers_version dtype torch_dtype _name_or_path _commit_hash name_or_path
    compile_submodels id2label label2id return_dict output_hidden_states output_attentions torchscript
    use_return_dict is_encoder_decoder is_decoder add_cross_attention tie_encoder_decoder tie_word_embeddings
    initializer_factor chunk_size_feed_forward pruned_heads problem_type finetuning_task tokenizer_class prefix
    pad_token_id bos_token_id eos_token_id sep_token_id decoder_start_token_id task_specific_params
    cross_attention_hidden_size
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature top_k
    top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size
    bad_words_ids num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
    forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens tf_legacy_loss use_bfloat16 text_config_dict image_config_dict
    multimodal_config_dict image_codebook_config_dict attn_implementation _attn_implementation_autoset
    """.split()
)


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"FlavaConfig.{key}: {message}")


def _check_positive_ints(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{prefix}{name}",
               f"must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Settings shared by the text, image and multimodal transformer encoders (HF names and defaults)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _validate(self, prefix: str) -> None:
        _check_positive_ints(self, prefix, ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                            "intermediate_size"))
        _check(self.hidden_size % self.num_attention_heads == 0, f"{prefix}hidden_size",
               f"{self.hidden_size} is not a multiple of {prefix}num_attention_heads={self.num_attention_heads}")
        _check(self.hidden_act in ACTIVATIONS, f"{prefix}hidden_act",
               f"{self.hidden_act!r} is not one of {ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"{prefix}{name}", f"must be in [0, 1), got {value!r}")
        _check(self.initializer_range > 0, f"{prefix}initializer_range", "must be > 0")
        _check(self.layer_norm_eps > 0, f"{prefix}layer_norm_eps", "must be > 0")


@dataclasses.dataclass(frozen=True)
class TextConfig(EncoderConfig):
    """The text encoder (HF `FlavaTextConfig`)."""

    vocab_size: int = 30522
    type_vocab_size: int = 2
    max_position_embeddings: int = 512
    pad_token_id: int | None = 0

    def _validate(self, prefix: str) -> None:
        super()._validate(prefix)
        _check_positive_ints(self, prefix, ("vocab_size", "type_vocab_size", "max_position_embeddings"))
        _check(self.pad_token_id is None or 0 <= self.pad_token_id < self.vocab_size, f"{prefix}pad_token_id",
               f"{self.pad_token_id!r} is outside the vocabulary [0, {self.vocab_size})")


@dataclasses.dataclass(frozen=True)
class ImageConfig(EncoderConfig):
    """The image encoder (HF `FlavaImageConfig`). `vocab_size` is the number of MIM classes (codebook tokens)."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    mask_token: bool = True
    vocab_size: int = 8192

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def _validate(self, prefix: str) -> None:
        super()._validate(prefix)
        _check_positive_ints(self, prefix, ("image_size", "patch_size", "num_channels", "vocab_size"))
        _check(self.image_size % self.patch_size == 0, f"{prefix}image_size",
               f"{self.image_size} is not a multiple of {prefix}patch_size={self.patch_size}")


@dataclasses.dataclass(frozen=True)
class MultimodalConfig(EncoderConfig):
    """The multimodal encoder (HF `FlavaMultimodalConfig`)."""

    num_hidden_layers: int = 6
    use_cls_token: bool = True


@dataclasses.dataclass(frozen=True)
class CodebookConfig:
    """The DALL-E-style image codebook that produces MIM targets (HF `FlavaImageCodebookConfig`).

    As in HF, the network always has four groups; `num_groups` only enters the residual gain 1/(groups*blocks)^2.
    """

    num_groups: int = 4
    input_channels: int = 3
    num_blocks_per_group: int = 2
    hidden_size: int = 256
    vocab_size: int = 8192
    freeze: bool = True
    initializer_range: float = 0.02

    def _validate(self, prefix: str) -> None:
        _check_positive_ints(self, prefix, ("num_groups", "input_channels", "num_blocks_per_group", "hidden_size",
                                            "vocab_size"))
        _check(self.freeze, f"{prefix}freeze", "only a frozen codebook is supported (the MIM targets must not "
               "train); set freeze=True")
        _check(self.initializer_range > 0, f"{prefix}initializer_range", "must be > 0")


_SUBCONFIGS = {
    "text_config": TextConfig,
    "image_config": ImageConfig,
    "multimodal_config": MultimodalConfig,
    "image_codebook_config": CodebookConfig,
}
_HF_MODEL_TYPES = {
    "text_config": "flava_text_model",
    "image_config": "flava_image_model",
    "multimodal_config": "flava_multimodal_model",
    "image_codebook_config": "flava_image_codebook",
}
# Fields of FlavaConfig that exist only in flava_jax: how to run the model, not what it is.
RUNTIME_FIELDS = ("multimodal_attention_mask", "dtype", "param_dtype", "remat_policy", "scan_layers", "attention")
ATTENTION = ("xla", "pallas_tpu", "pallas_gpu", "auto")


@dataclasses.dataclass(frozen=True)
class FlavaConfig:
    """Every size and setting of FLAVA, mirroring transformers' `FlavaConfig` (defaults = the paper's model).

    Run-time switches beyond HF, all off by default (paper-faithful):

    * ``multimodal_attention_mask``: mask text padding inside the multimodal encoder. HF 4.29 (the paper's code)
      passes no mask there, so padding tokens are attended to; HF 5.x masks them when `attention_mask` is given.
    * ``dtype`` / ``param_dtype``: compute and parameter dtypes, e.g. bf16 compute with f32 parameters.
      LayerNorm statistics, softmax and losses are always computed in f32.
    * ``remat_policy``: rematerialise each transformer layer in the backward pass, with this
      `jax.checkpoint_policies` policy (e.g. ``"nothing_saveable"``); None keeps activations.
    * ``scan_layers``: run each encoder's layers with `nn.scan` (parameters stacked on a leading layer axis),
      which compiles one layer instead of N. `from_pretrained`/`save_pretrained` convert the layout.
    * ``attention``: ``"xla"`` (jnp operations), ``"pallas_tpu"`` (the TPU kernel of `attention_tpu.py`, scores
      kept on chip), ``"pallas_gpu"`` (the Triton kernels of `attention_gpu.py`, flash-attention style), or
      ``"auto"``: the trainer picks the mesh's kernel (TPU v4 and newer, GPUs of compute capability 8.0 and up)
      and ``"xla"`` elsewhere (a model built with ``"auto"`` outside it runs ``"xla"``).
    """

    text_config: TextConfig = dataclasses.field(default_factory=TextConfig)
    image_config: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    multimodal_config: MultimodalConfig = dataclasses.field(default_factory=MultimodalConfig)
    image_codebook_config: CodebookConfig = dataclasses.field(default_factory=CodebookConfig)
    hidden_size: int = 768
    layer_norm_eps: float = 1e-12
    projection_dim: int = 768
    init_codebook: bool = True
    logit_scale_init_value: float = 2.6592
    initializer_range: float = 0.02
    ce_ignore_index: int = -100
    mim_weight: float = 1.0
    mlm_weight: float = 1.0
    global_contrastive_weight: float = 1.0
    itm_weight: float = 1.0
    mmm_image_weight: float = 1.0
    mmm_text_weight: float = 1.0
    global_backprop_contrastive: bool = True
    skip_unmasked_multimodal_encoder: bool = True
    return_loss: bool = True
    # flava_jax run-time switches (see the class docstring).
    multimodal_attention_mask: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str | None = None
    scan_layers: bool = False
    attention: str = "xla"

    def __post_init__(self) -> None:
        for key, cls in _SUBCONFIGS.items():
            value = getattr(self, key)
            if isinstance(value, Mapping):
                object.__setattr__(self, key, _subconfig_from_dict(cls, value, key))
            elif not isinstance(value, cls):
                raise ConfigError(f"FlavaConfig.{key}: expected a {cls.__name__} or a dict, got {type(value)}")
        self.validate()

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the key of the first invalid value."""
        for key in _SUBCONFIGS:
            getattr(self, key)._validate(f"{key}.")
        _check_positive_ints(self, "", ("hidden_size", "projection_dim"))
        # The multimodal heads reuse the text/image head shapes and read multimodal states, and the ITM pooler is
        # sized by the top-level hidden_size, so all four widths must agree (as they do in every FLAVA).
        widths = {"hidden_size": self.hidden_size, "text_config.hidden_size": self.text_config.hidden_size,
                  "image_config.hidden_size": self.image_config.hidden_size,
                  "multimodal_config.hidden_size": self.multimodal_config.hidden_size}
        _check(len(set(widths.values())) == 1, "hidden_size",
               f"the MMM and ITM heads apply text/image-sized heads to multimodal states, so these must be equal: "
               f"{widths}")
        if self.init_codebook:
            _check(self.image_codebook_config.vocab_size == self.image_config.vocab_size,
                   "image_codebook_config.vocab_size",
                   f"{self.image_codebook_config.vocab_size} != image_config.vocab_size="
                   f"{self.image_config.vocab_size}; the codebook's tokens are the MIM classes")
            _check(self.image_codebook_config.input_channels == self.image_config.num_channels,
                   "image_codebook_config.input_channels",
                   f"{self.image_codebook_config.input_channels} != image_config.num_channels="
                   f"{self.image_config.num_channels}")
        for name in LOSS_NAMES:
            weight = getattr(self, f"{name}_weight")
            _check(isinstance(weight, (int, float)) and weight >= 0, f"{name}_weight", f"must be >= 0, got {weight!r}")
        _check(self.layer_norm_eps > 0, "layer_norm_eps", "must be > 0")
        _check(self.initializer_range > 0, "initializer_range", "must be > 0")
        for key in ("dtype", "param_dtype"):
            _check(getattr(self, key) in DTYPES, key, f"{getattr(self, key)!r} is not one of {DTYPES}")
        _check(self.attention in ATTENTION, "attention", f"{self.attention!r} is not one of {ATTENTION}")
        if self.remat_policy is not None:
            policies = sorted(p for p in dir(jax.checkpoint_policies) if not p.startswith("_"))
            _check(self.remat_policy in policies, "remat_policy",
                   f"{self.remat_policy!r} is not a jax.checkpoint_policies name: {policies}")

    # --------------------------------------------------------------------------------------- derived sizes
    @property
    def codebook_image_size(self) -> int:
        """Side of the codebook's input image: its three 2x poolings must give one token per image patch."""
        return 8 * self.image_config.grid_size

    def to_dict(self) -> dict[str, Any]:
        """Every field, sub-configs as dicts: `FlavaConfig(**config.to_dict()) == config`."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> FlavaConfig:
        """A copy with `changes` applied; sub-configs may be given as dicts of the fields to change."""
        for key, cls in _SUBCONFIGS.items():
            if isinstance(changes.get(key), Mapping):
                changes[key] = _subconfig_from_dict(cls, {**dataclasses.asdict(getattr(self, key)), **changes[key]},
                                                    key)
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"FlavaConfig: unknown keys {unknown}")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> FlavaConfig:
        """`full` (HF defaults = the paper), `half` (the thesis size) or `tiny` (tests), then `changes`."""
        if name not in PRESETS:
            raise ConfigError(f"FlavaConfig preset {name!r} is not one of {sorted(PRESETS)}")
        return cls().replace(**PRESETS[name]).replace(**changes)

    # ---------------------------------------------------------------------------------- HF conversion
    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], **runtime: Any) -> FlavaConfig:
        """Build from an HF `FlavaConfig` dict (e.g. a loaded config.json), plus flava_jax run-time switches."""
        model_type = hf.get("model_type", "flava")
        if model_type != "flava":
            raise ConfigError(f"FlavaConfig: the HF config has model_type={model_type!r}, expected 'flava'")
        kwargs: dict[str, Any] = {}
        ignored: list[str] = []
        for key, sub_cls in _SUBCONFIGS.items():
            # Old FLAVA configs (e.g. facebook/flava-full) carry `<key>_dict`, which HF lets override `<key>`.
            merged = {**(hf.get(key) or {}), **(hf.get(f"{key}_dict") or {})}
            kwargs[key] = _subconfig_from_dict(sub_cls, merged, key, ignored=ignored)
        own = {f.name for f in dataclasses.fields(cls)} - set(_SUBCONFIGS) - set(RUNTIME_FIELDS)
        for key, value in hf.items():
            if key in own:
                kwargs[key] = value
            elif key not in _SUBCONFIGS and key not in _HF_BOOKKEEPING:
                ignored.append(key)
        if ignored:
            # HF configs of other versions carry generic keys; report rather than fail, since none shapes FLAVA.
            log.warning("FlavaConfig.from_hf_dict ignored HF keys it does not know: %s", sorted(ignored))
        bad_runtime = sorted(set(runtime) - set(RUNTIME_FIELDS))
        if bad_runtime:
            raise ConfigError(f"FlavaConfig: {bad_runtime} are not run-time switches {RUNTIME_FIELDS}")
        return cls(**kwargs, **runtime)

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF `FlavaConfig` dict that `transformers.FlavaConfig(**d)` and config.json loading accept."""
        out: dict[str, Any] = {"architectures": ["FlavaForPreTraining"], "model_type": "flava"}
        for f in dataclasses.fields(self):
            if f.name in RUNTIME_FIELDS:
                continue
            value = getattr(self, f.name)
            if f.name in _SUBCONFIGS:
                value = {**dataclasses.asdict(value), "model_type": _HF_MODEL_TYPES[f.name]}
            out[f.name] = value
        # HF ties each masked head's `bias` to its `decoder.bias`; the export stores only the latter.
        out["tie_word_embeddings"] = True
        return out


def _subconfig_from_dict(cls: type, values: Mapping[str, Any], key: str, ignored: list[str] | None = None) -> Any:
    """Build sub-config `key`; unknown names raise, or are appended to `ignored` when that list is given."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name in fields:
            if name in ("image_size", "patch_size") and isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise ConfigError(f"FlavaConfig.{key}.{name}: non-square {list(value)} is not supported")
                value = value[0]
            kwargs[name] = value
        elif ignored is None:
            raise ConfigError(f"FlavaConfig.{key}: unknown key {name!r}; known keys: {sorted(fields)}")
        elif name not in _HF_BOOKKEEPING:
            ignored.append(f"{key}.{name}")
    return cls(**kwargs)


_HALF = 516  # the thesis runs' width: 12 heads of 43; FFN stays 3072 (docs/reference.md#model-sizes)
_TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=37)
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "half": dict(
        hidden_size=_HALF,
        projection_dim=_HALF,
        text_config=dict(hidden_size=_HALF, num_hidden_layers=6),
        image_config=dict(hidden_size=_HALF, num_hidden_layers=6),
        multimodal_config=dict(hidden_size=_HALF),
    ),
    "tiny": dict(
        hidden_size=32,
        projection_dim=16,
        text_config=dict(_TINY, num_hidden_layers=2, vocab_size=512, max_position_embeddings=128),
        image_config=dict(_TINY, num_hidden_layers=2, image_size=32, patch_size=8, vocab_size=64),
        multimodal_config=dict(_TINY, num_hidden_layers=1),
        image_codebook_config=dict(hidden_size=8, vocab_size=64),
    ),
}
