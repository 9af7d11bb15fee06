"""The paper's grid: 100M words of WiT text, 0 images (add :model=half for the thesis size)."""

from configs import base


def get_config(arg=None):
    return base.grid_config(text_words=100_000_000, images=0, arg=arg)
