"""The model: FlavaConfig (`config`), the encoder blocks (`layers`), FlavaForPreTraining with its heads and six
losses (`flava`, `losses`), the frozen image codebook (`codebook`), input checks (`input_checks`), where activations
go on a mesh (`activation_sharding`), and conversion to and from transformers' checkpoints (`hf_io`)."""
