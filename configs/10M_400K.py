"""The paper's grid: 10M words of WiT text, 400K images (add :model=half for the thesis size)."""

from configs import base


def get_config(arg=None):
    return base.grid_config(text_words=10_000_000, images=400_000, arg=arg)
