"""Evaluation of an export with PyTorch and transformers (no JAX model code): the command line (`cli`), the PLL
scorer (`torch_pll`), the contrastive embeddings and ITM scores (`torch_features`), GLUE/SuperGLUE/MSGS fine-tuning
(`finetune`, readers in `glue`), the grid report (`report`, with the paper's mixed models in `regression`) and the
paper's own numbers (`paper_results`)."""
