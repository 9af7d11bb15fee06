"""What two stages share, importing nothing else of flava_jax and neither JAX nor PyTorch: progress lines with rate
and ETA (`progress`), the config error and settings read from config sections (`settings`), the pseudo-log-likelihood
algorithm both scorers are built from (`pll`), the BLiMP reader and scoring (`blimp`), and the arithmetic of
zero-shot classification (`zeroshot`) and image-text retrieval (`retrieval`), token ids in padded batches by length
(`text_batches`), and reading transformers checkpoints' files, PyTorch pickles safely (`checkpoint_files`)."""
