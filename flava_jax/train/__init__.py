"""Training: the trainer's loop (`trainer`), the jitted step (`step`), AdamW and its groups (`optim`), stream
sampling and modality early stopping (`scheduler`), the mesh and shardings (`sharding`), Orbax checkpoints
(`checkpoint`), the run file an export reads (`run_file`), metrics, FLOPs and throughput (`metrics`), the
in-training evaluators (`evaluators`, with the JAX PLL scorer in `pll_scorer` and the contrastive embeddings and ITM
scores in `feature_scorer`), the ahead-of-time compile (`aot`) and host malloc tunables for XLA:CPU
(`host_malloc`)."""
