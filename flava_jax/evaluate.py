"""`python -m flava_jax.evaluate`: score an export with PyTorch (BLiMP, pseudo-perplexity, GLUE/SuperGLUE, MSGS).
The command lives in flava_jax/eval/cli.py."""

from flava_jax.eval.cli import main

if __name__ == "__main__":
    main()
