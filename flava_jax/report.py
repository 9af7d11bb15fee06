"""`python -m flava_jax.report`: evaluation results beside the paper's numbers. The command lives in
flava_jax/eval/report.py."""

from flava_jax.eval.report import main

if __name__ == "__main__":
    main()
