"""FLAVA in Flax Linen, with transformers' parameter names and `FlavaForPreTraining.forward` semantics (HF 5.x).

`FlavaForPreTraining(config).apply({"params": p}, input_ids=..., pixel_values=..., ...)` returns the same losses,
logits and embeddings as HF's forward with the same weights. Where HF returns data-dependent shapes (boolean
indexing), this returns fixed shapes plus a mask that selects HF's rows:

* ``mlm_logits`` etc. are (B, L, V) over every position, or (B, K, V) over the first K labelled positions of each
  row when a capacity is given (`text_mask_capacity` / `image_mask_capacity`, the memory-lean training path).
  HF's flattened logits are ``out.mlm_logits[out.mlm_logits_mask]``.
* ``contrastive_logits_per_*`` and ``multimodal_masked_embeddings`` keep every row; HF's are
  ``x[out.pos_mask]`` when ITM labels are given.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flava_jax.model import input_checks as inputs_lib
from flava_jax.model import losses
from flava_jax.model.activation_sharding import constrain
from flava_jax.model.codebook import FlavaImageCodebook
from flava_jax.model.config import EncoderConfig, FlavaConfig, ImageConfig, MultimodalConfig, TextConfig
from flava_jax.model.layers import DenseBlock, FlavaEncoder, activation, attention_bias, dense, layer_norm

Dtype = Any
LOGIT_SCALE_CLAMP_MIN = 0.0
LOGIT_SCALE_CLAMP_MAX = 4.6052


# ------------------------------------------------------------------------------------------------ outputs
@flax.struct.dataclass
class EncoderOutput:
    """One encoder pass. `pre_layernorm_state` is HF's `hidden_states[-1]`, what the multimodal encoder reads."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    pre_layernorm_state: jax.Array


@flax.struct.dataclass
class FlavaLosses:
    """The six weighted losses (None where the batch does not define them), as HF's `FlavaLosses`."""

    mim: jax.Array | None = None
    mlm: jax.Array | None = None
    itm: jax.Array | None = None
    global_contrastive: jax.Array | None = None
    mmm_image: jax.Array | None = None
    mmm_text: jax.Array | None = None

    def items(self) -> list[tuple[str, jax.Array]]:
        """(name, loss) for the losses that are present."""
        names = ("mim", "mlm", "itm", "global_contrastive", "mmm_image", "mmm_text")
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]


@flax.struct.dataclass
class FlavaModelOutput:
    """HF `FlavaModelOutput`: per-encoder outputs of one pass (None where the input was absent)."""

    image_embeddings: jax.Array | None = None
    image_output: EncoderOutput | None = None
    text_embeddings: jax.Array | None = None
    text_output: EncoderOutput | None = None
    multimodal_embeddings: jax.Array | None = None
    multimodal_output: EncoderOutput | None = None


@flax.struct.dataclass
class FlavaForPreTrainingOutput:
    """HF `FlavaForPreTrainingOutput` plus the masks that map fixed shapes to HF's filtered ones (module doc)."""

    loss: jax.Array | None = None
    loss_info: FlavaLosses = FlavaLosses()
    image_embeddings: jax.Array | None = None
    image_output: EncoderOutput | None = None
    text_embeddings: jax.Array | None = None
    text_output: EncoderOutput | None = None
    multimodal_embeddings: jax.Array | None = None
    multimodal_output: EncoderOutput | None = None
    image_masked_embeddings: jax.Array | None = None
    image_masked_output: EncoderOutput | None = None
    text_masked_embeddings: jax.Array | None = None
    text_masked_output: EncoderOutput | None = None
    multimodal_masked_embeddings: jax.Array | None = None
    multimodal_masked_output: EncoderOutput | None = None
    mim_logits: jax.Array | None = None
    mlm_logits: jax.Array | None = None
    itm_logits: jax.Array | None = None
    contrastive_logits_per_image: jax.Array | None = None
    contrastive_logits_per_text: jax.Array | None = None
    mmm_image_logits: jax.Array | None = None
    mmm_text_logits: jax.Array | None = None
    # flava_jax additions
    mim_logits_mask: jax.Array | None = None
    mlm_logits_mask: jax.Array | None = None
    mmm_image_logits_mask: jax.Array | None = None
    mmm_text_logits_mask: jax.Array | None = None
    pos_mask: jax.Array | None = None
    mim_labels: jax.Array | None = None
    # L2-normalised contrastive projections of the unmasked CLS states (B, P), as the contrastive logits use them
    image_contrastive_embedding: jax.Array | None = None
    text_contrastive_embedding: jax.Array | None = None
    metrics: dict[str, Any] = flax.struct.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ encoders
class _Runtime(nn.Module):
    """Fields every FLAVA submodule shares: the dtype policy and the per-layer execution switches."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str | None = None
    scan_layers: bool = False
    attention: str = "xla"

    def _encoder(self, config: EncoderConfig, deterministic: bool) -> FlavaEncoder:
        return FlavaEncoder(config, self.dtype, self.param_dtype, deterministic, self.remat_policy,
                            self.scan_layers, self.attention, name="encoder")

    def _layer_norm(self, eps: float, name: str) -> nn.LayerNorm:
        return layer_norm(eps, self.dtype, self.param_dtype, name)

    def _dense(self, features: int, init_range: float, name: str) -> nn.Dense:
        return dense(features, init_range, self.dtype, self.param_dtype, name)

    def _finish(self, config: EncoderConfig, hidden: jax.Array) -> EncoderOutput:
        """Final LayerNorm and tanh pooler over the first token (HF `FlavaPooler`)."""
        last = self._layer_norm(config.layer_norm_eps, "layernorm")(hidden)
        pooled = _pooler(config.hidden_size, config.initializer_range, self.dtype, self.param_dtype)(last[:, 0])
        return EncoderOutput(last_hidden_state=last, pooler_output=pooled, pre_layernorm_state=hidden)


def _pooler(features: int, init_range: float, dtype: Dtype, param_dtype: Dtype) -> DenseBlock:
    """HF `FlavaPooler` (applied to the first token): `pooler.dense`, then tanh."""
    return DenseBlock(features, init_range, 0.0, dtype, param_dtype, deterministic=True, act="tanh", name="pooler")


def _embedding_init(std: float, pad_row: int | None):
    """N(0, std) with the padding row zeroed, as HF initialises `nn.Embedding(padding_idx=...)`."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        table = nn.initializers.normal(std)(key, shape, dtype)
        return table if pad_row is None else table.at[pad_row].set(0)

    return init


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    # Out-of-range ids read NaN instead of a clamped row, so a tokenizer/vocabulary mismatch cannot pass unseen.
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


class TextEmbeddings(_Runtime):
    """word + token_type + position embeddings, LayerNorm, dropout (HF `FlavaTextEmbeddings`)."""

    config: TextConfig = TextConfig()

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array | None, position_ids: jax.Array | None,
                 deterministic: bool) -> jax.Array:
        c = self.config
        std = c.initializer_range
        # Flax stores a table under "embedding"; one module per table makes the path `word_embeddings/embedding`.
        word = _Table(c.vocab_size, c.hidden_size, std, c.pad_token_id, self.param_dtype, name="word_embeddings")
        position = _Table(c.max_position_embeddings, c.hidden_size, std, None, self.param_dtype,
                          name="position_embeddings")
        token_type = _Table(c.type_vocab_size, c.hidden_size, std, None, self.param_dtype, name="token_type_embeddings")
        length = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.arange(length)[None, :]
        words = word(input_ids)
        if c.pad_token_id is not None:
            # torch's padding_idx: the pad row receives no gradient.
            words = jnp.where((input_ids == c.pad_token_id)[..., None], jax.lax.stop_gradient(words), words)
        x = words + token_type(token_type_ids)
        x = x + position(position_ids)
        x = self._layer_norm(c.layer_norm_eps, "LayerNorm")(x.astype(self.dtype))
        return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class _Table(nn.Module):
    rows: int
    features: int
    std: float
    pad_row: int | None
    param_dtype: Dtype

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param("embedding", _embedding_init(self.std, self.pad_row), (self.rows, self.features),
                           self.param_dtype)
        return _lookup(table, ids)


class FlavaTextModel(_Runtime):
    """Text encoder (HF `FlavaTextModel`)."""

    config: TextConfig = TextConfig()

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, position_ids: jax.Array | None = None,
                 deterministic: bool = True) -> EncoderOutput:
        x = TextEmbeddings(self.dtype, self.param_dtype, config=self.config, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic)
        hidden = self._encoder(self.config, deterministic)(x, attention_bias(attention_mask))
        return self._finish(self.config, hidden)


class ImageEmbeddings(_Runtime):
    """Patch embedding, mask-token substitution, CLS, position embeddings (HF `FlavaImageEmbeddings`)."""

    config: ImageConfig = ImageConfig()

    @nn.compact
    def __call__(self, pixel_values: jax.Array, bool_masked_pos: jax.Array | None, deterministic: bool) -> jax.Array:
        c = self.config
        zeros = nn.initializers.zeros
        cls_token = self.param("cls_token", zeros, (1, 1, c.hidden_size), self.param_dtype)
        mask_token = self.param("mask_token", zeros, (1, 1, c.hidden_size), self.param_dtype) if c.mask_token else None
        position = self.param("position_embeddings", zeros, (1, c.num_patches + 1, c.hidden_size), self.param_dtype)
        patches = _PatchEmbeddings(c, self.dtype, self.param_dtype, name="patch_embeddings")(pixel_values)
        batch = patches.shape[0]
        if bool_masked_pos is not None:
            if mask_token is None:
                raise ValueError("bool_masked_pos was given but image_config.mask_token is False: the model has no "
                                 "mask token to substitute")
            mask = bool_masked_pos.reshape(batch, -1, 1).astype(patches.dtype)
            patches = patches * (1.0 - mask) + mask_token.astype(patches.dtype) * mask
        x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(patches.dtype), (batch, 1, c.hidden_size)), patches],
                            axis=1)
        x = x + position.astype(x.dtype)
        return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class _PatchEmbeddings(nn.Module):
    config: ImageConfig
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c = self.config
        conv = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                       padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=nn.initializers.normal(c.initializer_range), bias_init=nn.initializers.zeros,
                       name="projection")
        x = conv(jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.dtype))  # NCHW (HF) -> NHWC
        return x.reshape(x.shape[0], -1, c.hidden_size)


class FlavaImageModel(_Runtime):
    """Image encoder (HF `FlavaImageModel`)."""

    config: ImageConfig = ImageConfig()

    @nn.compact
    def __call__(self, pixel_values: jax.Array, bool_masked_pos: jax.Array | None = None,
                 deterministic: bool = True) -> EncoderOutput:
        x = ImageEmbeddings(self.dtype, self.param_dtype, config=self.config, name="embeddings")(
            pixel_values, bool_masked_pos, deterministic)
        hidden = self._encoder(self.config, deterministic)(x, None)
        return self._finish(self.config, hidden)


class FlavaMultimodalModel(_Runtime):
    """Multimodal encoder over [image states; text states] with its own CLS (HF `FlavaMultimodalModel`)."""

    config: MultimodalConfig = MultimodalConfig()

    @nn.compact
    def __call__(self, hidden_states: jax.Array, attention_mask: jax.Array | None = None,
                 deterministic: bool = True) -> EncoderOutput:
        c = self.config
        x = hidden_states.astype(self.dtype)
        if c.use_cls_token:
            cls_token = self.param("cls_token", nn.initializers.zeros, (1, 1, c.hidden_size), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(x.dtype), (x.shape[0], 1, c.hidden_size)), x],
                                axis=1)
        hidden = self._encoder(c, deterministic)(x, attention_bias(attention_mask))
        return self._finish(c, hidden)


class FlavaModel(_Runtime):
    """The three encoders, the projections into the multimodal and contrastive spaces, and the logit scale."""

    config: FlavaConfig = FlavaConfig()

    def setup(self) -> None:
        c = self.config
        runtime = dict(dtype=self.dtype, param_dtype=self.param_dtype, remat_policy=self.remat_policy,
                       scan_layers=self.scan_layers, attention=self.attention)
        self.text_model = FlavaTextModel(config=c.text_config, **runtime)
        self.image_model = FlavaImageModel(config=c.image_config, **runtime)
        self.multimodal_model = FlavaMultimodalModel(config=c.multimodal_config, **runtime)
        self.image_projection = self._dense(c.projection_dim, c.initializer_range, "image_projection")
        self.text_projection = self._dense(c.projection_dim, c.initializer_range, "text_projection")
        self.image_to_mm_projection = self._dense(c.multimodal_config.hidden_size, c.initializer_range,
                                                  "image_to_mm_projection")
        self.text_to_mm_projection = self._dense(c.multimodal_config.hidden_size, c.initializer_range,
                                                 "text_to_mm_projection")
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init_value), (),
                                      self.param_dtype)

    def __call__(self, input_ids: jax.Array | None = None, pixel_values: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None,
                 bool_masked_pos: jax.Array | None = None, position_ids: jax.Array | None = None,
                 skip_multimodal_encoder: bool = False, deterministic: bool = True) -> FlavaModelOutput:
        """One pass of HF `FlavaModel.forward` (the multimodal encoder runs when both modalities are present)."""
        image_output = text_output = multimodal_output = None
        if pixel_values is not None:
            image_output = self.image_model(pixel_values, bool_masked_pos, deterministic)
        if input_ids is not None:
            text_output = self.text_model(input_ids, attention_mask, token_type_ids, position_ids, deterministic)
        if image_output is not None and text_output is not None and not skip_multimodal_encoder:
            # The multimodal encoder reads the states before each encoder's final LayerNorm, as HF does.
            image_states = self.image_to_mm_projection(image_output.pre_layernorm_state)
            text_states = self.text_to_mm_projection(text_output.pre_layernorm_state)
            mm_mask = None
            if self.config.multimodal_attention_mask and attention_mask is not None:
                prefix = image_states.shape[1] + int(self.config.multimodal_config.use_cls_token)
                mm_mask = jnp.concatenate([jnp.ones((attention_mask.shape[0], prefix), attention_mask.dtype),
                                           attention_mask], axis=1)
            multimodal_output = self.multimodal_model(jnp.concatenate([image_states, text_states], axis=1), mm_mask,
                                                      deterministic)
        return FlavaModelOutput(
            image_embeddings=None if image_output is None else image_output.last_hidden_state,
            image_output=image_output,
            text_embeddings=None if text_output is None else text_output.last_hidden_state,
            text_output=text_output,
            multimodal_embeddings=None if multimodal_output is None else multimodal_output.last_hidden_state,
            multimodal_output=multimodal_output,
        )

    def clamped_logit_scale(self, deterministic: bool) -> jax.Array:
        """HF clamps logit_scale in place to [0, ln 100] in training; here the clamp is straight-through, so the
        gradient matches torch's (taken at the clamped value) and the train step re-clamps the stored value."""
        scale = self.logit_scale
        if deterministic:
            return scale
        return scale + jax.lax.stop_gradient(jnp.clip(scale, LOGIT_SCALE_CLAMP_MIN, LOGIT_SCALE_CLAMP_MAX) - scale)


# --------------------------------------------------------------------------------------------------- heads
class _HeadTransform(nn.Module):
    config: EncoderConfig
    init_range: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        x = dense(c.hidden_size, self.init_range, self.dtype, self.param_dtype, "dense")(x)
        x = activation(c.hidden_act)(x)
        return layer_norm(c.layer_norm_eps, self.dtype, self.param_dtype, "LayerNorm")(x)


class FlavaMaskedPredictionHead(nn.Module):
    """dense-act-LayerNorm, then a decoder to the vocabulary (HF's `bias` is tied to `decoder.bias`)."""

    config: TextConfig | ImageConfig
    init_range: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _HeadTransform(self.config, self.init_range, self.dtype, self.param_dtype, name="transform")(
            constrain(x, "batch", "length", "embed"))
        logits = dense(self.config.vocab_size, self.init_range, self.dtype, self.param_dtype, "decoder")(x)
        # Examples keep their devices here too: left alone, XLA may gather every example's states to split the
        # vocabulary over the decoder's FSDP shards instead.
        return constrain(logits, "batch", "length", "vocab")


class FlavaITMHead(nn.Module):
    """tanh pooler over the multimodal CLS, then a 2-way classifier (HF `FlavaITMHead`)."""

    config: FlavaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        pooled = _pooler(c.hidden_size, c.initializer_range, self.dtype, self.param_dtype)(x[:, 0])
        return dense(2, c.initializer_range, self.dtype, self.param_dtype, "seq_relationship")(pooled)


def _gather_labelled(hidden: jax.Array, labels: jax.Array, capacity: int | None,
                     ignore_index: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first `capacity` labelled positions of each row: (B, K, H) states, (B, K) labels, dropped count.

    Without a capacity every position is kept. Labelled positions keep their order, so the valid rows of the
    result, read row-major, are exactly HF's boolean-indexed `sequence[labels != ignore]`.
    """
    if capacity is None or capacity >= labels.shape[1]:
        return hidden, labels, jnp.zeros((), jnp.int32)
    valid = labels != ignore_index
    order = jnp.argsort(jnp.logical_not(valid).astype(jnp.int8), axis=1, stable=True)[:, :capacity]
    kept = jnp.take_along_axis(labels, order, axis=1)
    dropped = valid.sum() - (kept != ignore_index).sum()
    return jnp.take_along_axis(hidden, order[..., None], axis=1), kept, dropped.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------- pretraining
class _Objective(NamedTuple):
    """One objective's share of the output: the fields it sets, and its weighted loss and metrics when scored."""

    fields: dict[str, jax.Array]
    loss: jax.Array | None = None
    metrics: dict[str, Any] | None = None


def _positive_pairs(labels: jax.Array | None, pos_mask: jax.Array | None, ignore_index: int) -> jax.Array | None:
    """`labels` with the rows of ITM negatives ignored: MMM scores positive pairs only."""
    if labels is None or pos_mask is None:
        return labels
    return jnp.where(pos_mask[:, None], labels, ignore_index)


def _pretraining_output(unmasked: FlavaModelOutput, masked: FlavaModelOutput, pos_mask: jax.Array | None,
                        codebook_labels: jax.Array | None,
                        **objectives: _Objective | None) -> FlavaForPreTrainingOutput:
    """HF's output from both passes and the objectives that ran; the total adds their losses in argument order."""
    ran = {name: o for name, o in objectives.items() if o is not None}
    scored = {name: o for name, o in ran.items() if o.loss is not None}
    return FlavaForPreTrainingOutput(
        loss=sum(o.loss for o in scored.values()) if scored else None,
        loss_info=FlavaLosses(**{name: o.loss for name, o in scored.items()}),
        image_embeddings=unmasked.image_embeddings,
        image_output=unmasked.image_output,
        text_embeddings=unmasked.text_embeddings,
        text_output=unmasked.text_output,
        multimodal_embeddings=unmasked.multimodal_embeddings,
        multimodal_output=unmasked.multimodal_output,
        image_masked_embeddings=masked.image_embeddings,
        image_masked_output=masked.image_output,
        text_masked_embeddings=masked.text_embeddings,
        text_masked_output=masked.text_output,
        multimodal_masked_embeddings=masked.multimodal_embeddings,
        multimodal_masked_output=masked.multimodal_output,
        pos_mask=pos_mask,
        mim_labels=codebook_labels,
        metrics={name: o.metrics for name, o in scored.items()},
        **{field: value for o in ran.values() for field, value in o.fields.items()},
    )


class FlavaForPreTraining(nn.Module):
    """FLAVA with its five pretraining objectives (six losses), mirroring HF `FlavaForPreTraining`.

    The dtype policy, remat and scan switches come from `config` (see `FlavaConfig`). Each objective's head and loss
    weight are named after its loss: `<name>_head`, `config.<name>_weight`.
    """

    config: FlavaConfig = FlavaConfig()

    def setup(self) -> None:
        c = self.config
        policy = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        self.flava = FlavaModel(config=c, remat_policy=c.remat_policy, scan_layers=c.scan_layers,
                                attention=c.attention, **policy)
        if c.init_codebook:
            self.image_codebook = FlavaImageCodebook(c.image_codebook_config, **policy)
        head = functools.partial(FlavaMaskedPredictionHead, init_range=c.initializer_range, **policy)
        self.mim_head = head(c.image_config)
        self.mlm_head = head(c.text_config)
        self.itm_head = FlavaITMHead(c, **policy)
        self.mmm_image_head = head(c.image_config)
        self.mmm_text_head = head(c.text_config)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        input_ids_masked: jax.Array | None = None,
        pixel_values: jax.Array | None = None,
        codebook_pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        bool_masked_pos: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        skip_unmasked_multimodal_encoder: bool | None = None,
        mlm_labels: jax.Array | None = None,
        mim_labels: jax.Array | None = None,
        itm_labels: jax.Array | None = None,
        return_loss: bool | None = None,
        deterministic: bool = True,
        text_mask_capacity: int | None = None,
        image_mask_capacity: int | None = None,
    ) -> FlavaForPreTrainingOutput:
        """HF `FlavaForPreTraining.forward`. See the module docstring for the fixed-shape outputs.

        Args beyond HF:
          deterministic: False is HF's training mode: dropout on (needs a "dropout" rng when a rate is > 0) and
            logit_scale clamped.
          text_mask_capacity / image_mask_capacity: score at most this many labelled text tokens / image patches
            per example, running the heads on the gathered states only. Labels beyond it are dropped and counted
            in `metrics["<loss>"]["dropped"]`.
        """
        c = self.config
        return_loss = c.return_loss if return_loss is None else return_loss
        if skip_unmasked_multimodal_encoder is None:
            skip_unmasked_multimodal_encoder = c.skip_unmasked_multimodal_encoder
        if input_ids_masked is None and input_ids is not None:
            warnings.warn("input_ids_masked is not given, so input_ids are used in its place and the MLM loss is "
                          "not a masked-LM loss; fine for inference on unmasked text", stacklevel=2)
            input_ids_masked = input_ids
        inputs_lib.check_inputs(c, input_ids=input_ids, input_ids_masked=input_ids_masked, pixel_values=pixel_values,
                                codebook_pixel_values=codebook_pixel_values, attention_mask=attention_mask,
                                token_type_ids=token_type_ids, bool_masked_pos=bool_masked_pos,
                                position_ids=position_ids, mlm_labels=mlm_labels, mim_labels=mim_labels,
                                itm_labels=itm_labels)

        common = dict(attention_mask=attention_mask, token_type_ids=token_type_ids, deterministic=deterministic)
        unmasked = self.flava(input_ids=input_ids, pixel_values=pixel_values, position_ids=position_ids,
                              skip_multimodal_encoder=skip_unmasked_multimodal_encoder, **common)
        masked = self.flava(input_ids=input_ids_masked, pixel_values=pixel_values, bool_masked_pos=bool_masked_pos,
                            **common)
        active = self._active_objectives(unmasked, masked)
        mim_labels, codebook_labels = self._image_labels(active, mim_labels, bool_masked_pos, codebook_pixel_values,
                                                         return_loss)
        mlm_labels = None if mlm_labels is None else mlm_labels.reshape(mlm_labels.shape[0], -1)
        capacities = (image_mask_capacity, text_mask_capacity)
        mim, mlm = self._unimodal_heads(active, masked, mim_labels, mlm_labels, capacities, return_loss)
        itm, pos_mask = self._itm(active, masked.multimodal_embeddings, itm_labels, return_loss)
        mmm_image, mmm_text = self._mmm(active, masked, mim_labels, mlm_labels, pos_mask, capacities, return_loss)
        contrastive = self._global_contrastive(active, unmasked, pos_mask, deterministic, return_loss)
        return _pretraining_output(unmasked, masked, pos_mask, codebook_labels, mim=mim, mlm=mlm, itm=itm,
                                   mmm_image=mmm_image, mmm_text=mmm_text, global_contrastive=contrastive)

    def _active_objectives(self, unmasked: FlavaModelOutput, masked: FlavaModelOutput) -> frozenset[str]:
        """Losses with a positive weight whose encoders ran (as HF, unimodal MIM/MLM only without the multimodal)."""
        multimodal = masked.multimodal_embeddings is not None
        inputs_present = dict(
            mim=masked.image_embeddings is not None and not multimodal,
            mlm=masked.text_embeddings is not None and not multimodal,
            itm=multimodal,
            mmm_image=multimodal,
            mmm_text=multimodal,
            global_contrastive=unmasked.image_embeddings is not None and unmasked.text_embeddings is not None,
        )
        return frozenset(name for name, present in inputs_present.items()
                         if present and getattr(self.config, f"{name}_weight") > 0)

    def _image_labels(self, active: frozenset[str], mim_labels: jax.Array | None, bool_masked_pos: jax.Array | None,
                      codebook_pixel_values: jax.Array | None,
                      return_loss: bool) -> tuple[jax.Array | None, jax.Array | None]:
        """MIM/MMM-image targets (B, N) with unmasked patches ignored, and the codebook's targets when it made them."""
        if not active & {"mim", "mmm_image"}:
            return None, None
        codebook_labels = None
        if mim_labels is None and return_loss:
            mim_labels = codebook_labels = self._codebook_labels(codebook_pixel_values)
        if mim_labels is None:
            return None, None
        if bool_masked_pos is None:
            raise ValueError("the MIM/MMM-image loss needs bool_masked_pos: only masked patches are scored "
                             "(or set mim_weight / mmm_image_weight to 0)")
        mim_labels = mim_labels.reshape(mim_labels.shape[0], -1)
        bool_masked_pos = bool_masked_pos.reshape(bool_masked_pos.shape[0], -1).astype(bool)
        # HF: labels of unmasked patches are ignored.
        return jnp.where(bool_masked_pos, mim_labels, self.config.ce_ignore_index), codebook_labels

    def _codebook_labels(self, codebook_pixel_values: jax.Array | None) -> jax.Array:
        """(B, N) codebook token ids; unlike HF, called only when an image-label loss will use them."""
        if not self.config.init_codebook:
            raise ValueError("return_loss needs MIM labels: pass mim_labels, or use a config with init_codebook")
        if codebook_pixel_values is None:
            raise ValueError("codebook_pixel_values are required to compute mim_labels with the codebook "
                             "(or pass mim_labels)")
        labels = self.image_codebook.get_codebook_indices(codebook_pixel_values)
        return labels.reshape(labels.shape[0], -1)

    def _masked_prediction(self, name: str, states: jax.Array, labels: jax.Array | None, capacity: int | None,
                           return_loss: bool) -> _Objective:
        """Logits of one masked-prediction head and, with labels, its weighted cross-entropy."""
        ignore = self.config.ce_ignore_index
        head = getattr(self, f"{name}_head")
        if labels is None:
            return _Objective({f"{name}_logits": head(states)})
        states = states[:, -labels.shape[1]:]
        states, labels, dropped = _gather_labelled(states, labels, capacity, ignore)
        logits = head(states)
        fields = {f"{name}_logits": logits, f"{name}_logits_mask": labels != ignore}
        if not return_loss:
            return _Objective(fields)
        loss, metrics = losses.cross_entropy(logits, labels, ignore_index=ignore)
        return _Objective(fields, loss * getattr(self.config, f"{name}_weight"), {**metrics, "dropped": dropped})

    def _unimodal_heads(self, active: frozenset[str], masked: FlavaModelOutput, mim_labels: jax.Array | None,
                        mlm_labels: jax.Array | None, capacities: tuple[int | None, int | None],
                        return_loss: bool) -> tuple[_Objective | None, _Objective | None]:
        """MIM on the masked image states and MLM on the masked text states (None where not active)."""
        image_capacity, text_capacity = capacities
        mim = mlm = None
        if "mim" in active:
            mim = self._masked_prediction("mim", masked.image_embeddings, mim_labels, image_capacity, return_loss)
        if "mlm" in active:
            mlm = self._masked_prediction("mlm", masked.text_embeddings, mlm_labels, text_capacity, return_loss)
        return mim, mlm

    def _itm(self, active: frozenset[str], multimodal_states: jax.Array | None, itm_labels: jax.Array | None,
             return_loss: bool) -> tuple[_Objective | None, jax.Array | None]:
        """ITM logits and loss, and the positive-pair mask that MMM and the contrastive loss score."""
        if "itm" not in active:
            return None, None
        logits = self.itm_head(multimodal_states)
        if itm_labels is None:
            return _Objective({"itm_logits": logits}), None
        itm_labels = itm_labels.reshape(-1)
        positive = itm_labels != 0
        # HF: with no positive pair in the batch, every pair counts as positive.
        pos_mask = positive | jnp.logical_not(positive.any())
        if not return_loss:
            return _Objective({"itm_logits": logits}), pos_mask
        loss, metrics = losses.cross_entropy(logits, itm_labels, ignore_index=self.config.ce_ignore_index)
        return _Objective({"itm_logits": logits}, loss * self.config.itm_weight, metrics), pos_mask

    def _mmm(self, active: frozenset[str], masked: FlavaModelOutput, mim_labels: jax.Array | None,
             mlm_labels: jax.Array | None, pos_mask: jax.Array | None, capacities: tuple[int | None, int | None],
             return_loss: bool) -> tuple[_Objective | None, _Objective | None]:
        """MMM-image and MMM-text on the masked multimodal states of positive pairs (None where not active)."""
        ignore = self.config.ce_ignore_index
        image_capacity, text_capacity = capacities
        states = masked.multimodal_embeddings
        mmm_image = mmm_text = None
        if "mmm_image" in active:
            num_patches = masked.image_embeddings.shape[1] - 1
            # HF reads patches at [2, 2 + num_patches): after the multimodal CLS and the image CLS.
            mmm_image = self._masked_prediction("mmm_image", states[:, 2:2 + num_patches],
                                                _positive_pairs(mim_labels, pos_mask, ignore), image_capacity,
                                                return_loss)
        if "mmm_text" in active:
            mmm_text = self._masked_prediction("mmm_text", states[:, -masked.text_embeddings.shape[1]:],
                                               _positive_pairs(mlm_labels, pos_mask, ignore), text_capacity,
                                               return_loss)
        return mmm_image, mmm_text

    def _global_contrastive(self, active: frozenset[str], unmasked: FlavaModelOutput, pos_mask: jax.Array | None,
                            deterministic: bool, return_loss: bool) -> _Objective | None:
        """Contrastive logits of the unmasked image/text CLS projections, and their loss over `pos_mask`'s pairs."""
        if "global_contrastive" not in active:
            return None
        image, text, logit_scale = self._contrastive(unmasked, deterministic)
        per_image, per_text = losses.contrastive_logits(image, text, logit_scale)
        fields = dict(image_contrastive_embedding=image, text_contrastive_embedding=text,
                      contrastive_logits_per_image=per_image, contrastive_logits_per_text=per_text)
        if not return_loss:
            return _Objective(fields)
        loss, metrics = losses.global_contrastive_loss(per_image, per_text, row_mask=pos_mask)
        return _Objective(fields, loss * self.config.global_contrastive_weight, metrics)

    def _contrastive(self, unmasked: FlavaModelOutput,
                     deterministic: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(image, text) L2-normalised projections of the unmasked CLS states, and the logit scale to use."""
        return (self._image_embedding(unmasked.image_embeddings), self._text_embedding(unmasked.text_embeddings),
                self.flava.clamped_logit_scale(deterministic))

    def _image_embedding(self, states: jax.Array) -> jax.Array:
        return losses.l2_normalize(self.flava.image_projection(states[:, 0]))

    def _text_embedding(self, states: jax.Array) -> jax.Array:
        return losses.l2_normalize(self.flava.text_projection(states[:, 0]))

    def text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """(B, P): the contrastive text embedding alone (use with `method=`), the L2-normalised text projection of
        position 0, as zero-shot classification and retrieval read it."""
        return self._text_embedding(self.flava(input_ids=input_ids, attention_mask=attention_mask).text_embeddings)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """(B, P): the contrastive image embedding alone (use with `method=`), from the image [CLS]."""
        return self._image_embedding(self.flava(pixel_values=pixel_values).image_embeddings)

    def itm_logits(self, input_ids: jax.Array, pixel_values: jax.Array,
                   attention_mask: jax.Array | None = None) -> jax.Array:
        """(B, 2): the ITM head on the unmasked pair (use with `method=`); logit 1 is "matched"."""
        out = self.flava(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        return self.itm_head(out.multimodal_embeddings)

    def contrastive_embeddings(self, input_ids: jax.Array, pixel_values: jax.Array,
                               attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None,
                               position_ids: jax.Array | None = None,
                               deterministic: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The global contrastive loss's inputs alone, from the unimodal encoders (use with `method=`):
        (image (B, P), text (B, P), logit scale), exactly as the full forward computes them."""
        unmasked = self.flava(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                              token_type_ids=token_type_ids, position_ids=position_ids, skip_multimodal_encoder=True,
                              deterministic=deterministic)
        return self._contrastive(unmasked, deterministic)

    def get_codebook_indices(self, codebook_pixel_values: jax.Array) -> jax.Array:
        """(B, C, H, W) codebook pixels -> (B, H/8, W/8) MIM target ids (use with `method=`)."""
        if not self.config.init_codebook:
            raise ValueError("this config has init_codebook=False: the model has no image codebook")
        return self.image_codebook.get_codebook_indices(codebook_pixel_values)

    def touch_all(self) -> None:
        """Call every submodule once, so that `init` with this method creates every parameter whatever the
        loss weights and switches (HF's module always has all heads)."""
        batch = _dummy_batch(self.config)
        out = self.flava(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                         attention_mask=batch["attention_mask"], bool_masked_pos=batch["bool_masked_pos"])
        states = out.multimodal_embeddings
        for head in (self.mim_head, self.mlm_head, self.itm_head, self.mmm_image_head, self.mmm_text_head):
            head(states)
        self.flava.text_projection(out.text_embeddings[:, 0])
        self.flava.image_projection(out.image_embeddings[:, 0])
        if self.config.init_codebook:
            self.image_codebook.get_codebook_indices(batch["codebook_pixel_values"])

    def init_params(self, rng: jax.Array) -> dict[str, Any]:
        """Random parameters initialised as HF initialises FLAVA (normal(initializer_range), zero biases, ...)."""
        return jax.jit(lambda key: self.init(key, method=FlavaForPreTraining.touch_all)["params"])(rng)


def _dummy_batch(config: FlavaConfig, text_length: int = 8) -> dict[str, jax.Array]:
    """A one-example image-text batch, for initialisation."""
    image = config.image_config
    side = config.codebook_image_size
    text = jnp.zeros((1, min(text_length, config.text_config.max_position_embeddings)), jnp.int32)
    return dict(
        input_ids=text,
        attention_mask=jnp.ones_like(text),
        pixel_values=jnp.zeros((1, image.num_channels, image.image_size, image.image_size), jnp.float32),
        codebook_pixel_values=jnp.zeros((1, image.num_channels, side, side), jnp.float32),
        bool_masked_pos=jnp.ones((1, image.num_patches), bool),
    )
