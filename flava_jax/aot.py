"""`python -m flava_jax.aot`: compile the train step ahead of time and report memory per device. The command lives
in flava_jax/train/aot.py."""

from absl import app

from flava_jax.train.aot import main

if __name__ == "__main__":
    app.run(main)
