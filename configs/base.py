"""Defaults shared by every configuration: the reference's recipe (docs/reference.md). Other configs start here.

Sequences are tuples: ml_collections' config_flags overrides a tuple from the command line
(--config.data.sources="('a.tsv','b.tsv')", or the flag repeated) but not a list."""

import os

from ml_collections import ConfigDict, config_dict

from flava_jax.data.images import USER_AGENT
from flava_jax.model.config import FlavaConfig

# Where the grid's :pairs= presets look for their datasets (any other value is a path): CC3M as img2dataset writes it
# (--output_folder), COCO's captions file beside its train2017/ image folder
PAIR_DATASETS = {"cc3m": "~/data/cc3m", "coco": "~/data/coco/annotations/captions_train2017.json"}


def model_config(preset: str) -> ConfigDict:
    """Every FlavaConfig field of a preset, so any can be overridden, e.g. --config.model.dtype=bfloat16."""
    fields = FlavaConfig.from_preset(preset).to_dict()
    fields["remat_policy"] = config_dict.placeholder(str)  # None, but overridable with a policy name
    return ConfigDict(fields)


def data_config() -> ConfigDict:
    """WiT carving (prepare) and batch making (pipeline), docs/reference.md#masking, docs/reference.md#data."""
    return ConfigDict(dict(
        # --- where: prepare's --out, read by the trainer; None: prepare into WORKDIR/data from `sources`
        dir=config_dict.placeholder(str),
        stage_dir=config_dict.placeholder(str),  # where a gs:// dir is copied; None: ~/.cache/flava_jax/data/...
        sources=(),  # WiT files, directories, globs or tfds:wit/train[@data_dir]
        # per stream (flava_jax/data/stream_sources.py), e.g. WiT's text with CC3M's images and pairs; None: `sources`
        text_sources=config_dict.placeholder(tuple),
        image_sources=config_dict.placeholder(tuple),
        pair_sources=config_dict.placeholder(tuple),
        image_dirs=(),  # local folders holding images by the file name of their URL
        cache_dir=config_dict.placeholder(str),  # download cache; None: ~/.cache/flava_jax/images
        download=True,
        # --- budgets: nested prefixes of the English, captioned rows (-1: everything the sources hold)
        text_words=10_000_000,
        images=4_000_000,
        language="en",  # rows of this WiT language only; None (--config.data.language=None): no filter
        require_caption=True,  # PMD-WiT's text is the reference caption: rows without one were dropped
        require_image=True,  # rows whose image cannot be had are dropped, text budget included (reference)
        heldout_fraction=0.1,  # the reference's 90/10 split, here seeded
        heldout_max_texts=4000,  # enough for pseudo-perplexity (the reference scores 2000 phrases)
        heldout_max_images=1000,  # held-out images (and their pairs) for the validation losses
        # --- stored images
        image_size=224,
        image_resize="squash",  # the reference squashes to 224x224; "crop" keeps the aspect ratio
        jpeg_quality=95,  # of the images prepare converts
        # False: an image already image_size x image_size PNG or JPEG (the paper's Hub data) is stored as it is, byte
        # for byte, so the model sees its own pixels; True: every image decoded, resized and re-encoded as JPEG
        image_reencode=False,
        max_image_pixels=89_478_485,  # larger images count as decompression bombs
        chunk_records=20_000,  # records per slice: what one worker carves at a time, and the commit (resume) unit
        # "count": text_words and images as counts; "percent": the reference's row prefixes train[:t%] and train[:v%]
        # of a source with its split (theodor1289/wit), t = text_words / 10M and v = images / 40K (its 1% labels)
        budget_unit="count",
        fetch_batch=512,  # rows a worker fetches (downloads in threads) before converting them
        prepare_workers=config_dict.placeholder(int),  # processes carving slices of the sources; None: every core
        # the paper's: BERT's uncased WordPiece vocabulary (bundled); "sentencepiece" trains one on the budgeted text,
        # a path names a BERT vocab.txt (or its directory)
        tokenizer="bert-base-uncased",
        tokenizer_max_texts=2_000_000,  # SentencePiece's training texts
        # workers: concurrent downloads of the whole prepare, shared by its worker processes
        fetch=dict(timeout=10.0, retries=3, backoff=1.0, max_backoff=60.0, workers=16, max_bytes=50 * 2**20,
                   user_agent=USER_AGENT),
        # --- batches
        text_max_length=512,  # text-only batches (the reference pads them to this length)
        pair_max_length=77,  # image-text batches
        mlm_probability=0.4,
        mask_patches=75,  # BEiT block masking: 75 of 196 patches, blocks of >= 16, aspect in [0.3, 1/0.3]
        mask_min_block=16,
        mask_min_aspect=0.3,
        mask_exact_count=True,  # False: the reference's early stop, which leaves 1 in 3 masks short of 75
        itm_negative_probability=0.1,
        itm_exclude_same_row=False,  # a fix: the reference may draw another text of the same image
        # the paper's proposed controls, applied when training reads (one prepared dataset serves all three):
        # "noise" (random pixels for every image) or "shuffled_pairs" (each pair another pair's image)
        image_control="none",
        length_buckets=(),  # a fix: e.g. (64, 128, 256, 512) pads text-only batches to the bucket that fits
        bucket_window=16,  # steps' worth of text micro-batches sorted by length together
        workers=2,  # pipeline worker processes per stream
        worker_buffer=2,
        read_threads=16,  # threads per process reading and transforming examples ahead
        read_buffer=500,  # examples read ahead per process
    ))


def train_config() -> ConfigDict:
    """Batches, sampling and the step (docs/reference.md#sampling, docs/reference.md#optimiser)."""
    return ConfigDict(dict(
        batch_size=4096,  # examples per optimizer step, all streams together
        micro_batch_size=64,  # examples per micro-step (the reference: 32 per GPU x 2 GPUs); accumulation fills up
        sampling_temperature=config_dict.placeholder(float),  # None: the reference's rule (1 if text >= images else 0)
        text_percent=config_dict.placeholder(float),  # None: from data.text_words (1% of WiT ~ 10M words)
        image_percent=config_dict.placeholder(float),  # None: from data.images (1% ~ 40K images)
        # contrastive negatives: "micro_batch" (the reference: its micro-batch across devices) or "global_batch"
        # (every pair of the optimizer step, exactly, for one more forward pass of the unimodal encoders)
        contrastive_negatives="micro_batch",
    ))


def optim_config() -> ConfigDict:
    """AdamW and its policy as data: learning-rate groups by parameter path, frozen and undecayed parameters."""
    return ConfigDict(dict(
        lr_groups=(("flava/text_model/.*", 7.5e-4), (".*", 1e-3)),  # first match wins
        frozen=("image_codebook/.*",),
        no_decay=(),  # a fix: e.g. (".*/bias", ".*(LayerNorm|layernorm).*", ".*embedding.*", ".*logit_scale")
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
        warmup_steps=10_000, decay_steps=450_000,  # linear warmup, then cosine to 0 at decay_steps
        grad_clip_norm=1.0,
    ))


def sharding_config() -> ConfigDict:
    """The device mesh (-1: the devices left), parameter sharding rules (regex over the parameter path -> mesh axes
    per dimension; first match wins; unmatched parameters are replicated, or FSDP-sharded with `fsdp`) and
    activation rules (logical axis of an activation -> mesh axes; default: examples over data and fsdp, attention
    heads and MLP units over tensor; unlisted axes replicated; () leaves activations to XLA)."""
    tensor_rules = (
        (r".*/attention/attention/(query|key|value)/kernel", (None, "tensor")),
        (r".*/attention/attention/(query|key|value)/bias", ("tensor",)),
        (r".*/intermediate/dense/kernel", (None, "tensor")),
        (r".*/intermediate/dense/bias", ("tensor",)),
        (r".*/attention/output/dense/kernel", ("tensor", None)),
        (r".*/encoder/layer/(\d+/)?output/dense/kernel", ("tensor", None)),
    )
    # Examples split as batches are; heads and the MLP's hidden units over "tensor", as the tensor rules split weights.
    activation_rules = (("batch", ("data", "fsdp")), ("heads", "tensor"), ("mlp", "tensor"))
    # With fsdp, when the weights are gathered: "step" once an optimizer step, before its micro-steps (a gathered
    # copy per device, in the compute dtype: the micro-steps' collectives are then their gradients' reduce-scatters
    # only), "micro_step" again at every micro-step (the least memory).
    return ConfigDict(dict(mesh=dict(data=-1, fsdp=1, tensor=1), fsdp=False, fsdp_min_size=2**16,
                           gather_weights="step", rules=tensor_rules, activation_rules=activation_rules))


def eval_config() -> ConfigDict:
    """In-training evaluators as data: name -> type (flava_jax/train/evaluators.py), interval, options. An entry's
    every_steps None runs it every `eval.every_steps`; delete an entry to skip it."""
    return ConfigDict(dict(
        every_steps=125,  # the reference validated every 8000 micro-batches = 125 optimizer steps
        evaluators=dict(
            validation=dict(type="validation_loss", every_steps=config_dict.placeholder(int), batch_size=64,
                            batches=8),
            # the reference: 2000 phrases per rank, truncated at 300 tokens
            pppl=dict(type="pppl", every_steps=config_dict.placeholder(int), texts=2000, max_length=300,
                      batch_size=256),
            blimp=dict(type="blimp", every_steps=config_dict.placeholder(int), dir=config_dict.placeholder(str),
                       limit=50, paradigms=(), batch_size=256),  # paradigms () = all
            # the reference: ImageNet's 50K validation images, 80 templates, prompts without [CLS] (its bug;
            # special_tokens=True encodes them as training does); needs dir, skipped without it
            zeroshot=dict(type="zeroshot", every_steps=config_dict.placeholder(int), dir=config_dict.placeholder(str),
                          class_names=config_dict.placeholder(str), limit=config_dict.placeholder(int),
                          templates=config_dict.placeholder(int), special_tokens=False, batch_size=256),
            # not in the reference: recall on the run's held-out pairs (or the pairs file `data`)
            retrieval=dict(type="retrieval", every_steps=config_dict.placeholder(int),
                           data=config_dict.placeholder(str), limit=1000, itm_rerank=0, batch_size=256),
        ),
    ))


def scheduler_config() -> ConfigDict:
    """Modality early stopping (the full-size era's monitor): patience in validations, halving, stop rules."""
    return ConfigDict(dict(enabled=True, patience=dict(mlm=3, mim=3, itm=5, global_contrastive=5, mmm_image=5,
                                                       mmm_text=5),
                           factor=0.5, min_delta=0.0, mmm_text_floor=0.06,
                           # the intended semantics; False: the reference's code, whose loader kept sampling with
                           # the initial stream weights (docs/reference.md#scheduler-bugs)
                           stream_weights_act=True))


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 5501650  # the reference's seed_everything value
    config.model = model_config("full")
    config.total_steps = 450_000  # the reference's cosine horizon; its runs stopped at 5K-50K steps
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2  # the latest N, plus the best by pseudo-perplexity
    config.log_every_steps = 10
    config.compilation_cache_dir = "~/.cache/flava_jax/xla"  # persistent XLA cache; "" turns it off
    # an export to start from instead of a random init (e.g. a released checkpoint: python -m flava_jax.export --from)
    config.init_from = config_dict.placeholder(str)
    # On CPU, XLA's per-step temporaries reused instead of faulted in afresh each step ("auto": on a CPU-only JAX for
    # half- and full-size models; "keep": always; "system": malloc as it is). See flava_jax/train/host_malloc.py.
    config.host_malloc = "auto"
    # A resume refuses a config that changes the experiment (flava_jax/train/run_file.py); True accepts the changes
    # and records them, with the step, in WORKDIR/run.json.
    config.allow_config_change = False
    config.data = data_config()
    config.train = train_config()
    config.optim = optim_config()
    config.sharding = sharding_config()
    config.eval = eval_config()
    config.scheduler = scheduler_config()
    return config


def grid_config(text_words: int, images: int, arg: str | None = None) -> ConfigDict:
    """One cell of the paper's grid. `arg` is what follows the config path after ":", comma-separated, e.g.
    --config=configs/10M_4M.py:model=half for the thesis size (default: model=full, the paper's),
    :control=noise / :control=shuffled_pairs for the paper's proposed image controls (data.image_control), and
    :pairs=cc3m / :pairs=coco / :pairs=PATH for its better-aligned images and pairs (data.image_sources and
    pair_sources; PAIR_DATASETS says where cc3m and coco are looked for)."""
    options = dict(item.split("=", 1) for item in (arg or "").split(",") if item)
    unknown = set(options) - {"model", "control", "pairs"}
    if unknown:
        raise ValueError(f"config argument: unknown options {sorted(unknown)}; known: model=full|half|tiny, "
                         f"control=none|noise|shuffled_pairs, pairs=cc3m|coco|PATH")
    config = get_config()
    config.model = model_config(options.get("model", "full"))
    config.data.image_control = options.get("control", "none")
    if "pairs" in options:  # the paper's "stronger alignment" check: WiT's text, another dataset's images and pairs
        where = PAIR_DATASETS.get(options["pairs"], options["pairs"])
        config.data.image_sources = config.data.pair_sources = (os.path.expanduser(where),)
    # The paper trained in bf16 mixed precision: f32 parameters, bf16 products, f32 softmax, LayerNorm and losses.
    config.model.dtype = "bfloat16"
    # One compiled layer per encoder, looped: the full step compiles for a TPU slice in minutes, not tens of minutes.
    config.model.scan_layers = True
    # On TPUs, attention as one Pallas kernel: the scores never leave the chip.
    config.model.attention = "auto"
    config.data.text_words = text_words
    config.data.images = images
    return config
