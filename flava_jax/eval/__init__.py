"""Evaluation of an export with PyTorch and transformers (no JAX model code): the command line (`cli`), the PLL
scorer (`torch_pll`), GLUE/SuperGLUE/MSGS fine-tuning (`finetune`, readers in `glue`), the grid report (`report`)
and the paper's own numbers (`paper_results`)."""
