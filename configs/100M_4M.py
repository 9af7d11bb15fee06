"""The paper's grid: 100M words of WiT text, 4M images (add :model=half for the thesis size)."""

from configs import base


def get_config(arg=None):
    return base.grid_config(text_words=100_000_000, images=4_000_000, arg=arg)
