"""Data: WiT sources, the prepare step, tokenizer, transforms, masking and the Grain pipelines."""
