"""Training data: the sources prepare reads, one module per format (`sources`: WiT's TSV, JSON lines, TFDS and Hub
parquet copies, img2dataset output, COCO captions), image fetching and storage (`images`), the prepare step
(`prepare`) into ArrayRecord streams (`records`), staging gs:// data to local disk (`stage`), the tokenizer
(`tokenizer`), masking (`masking`), the Grain pipelines (`pipeline`), the device-side transforms the step applies
(`transforms`), and the bundled sample (`sample`). Evaluation data: labelled image sets such as ImageNet's validation
set (`image_sets`, with the bundled class names and prompt templates in imagenet/), image-text pairs for retrieval
(`retrieval_pairs`), their images decoded at the encoder's size (`eval_images`), and both read into scorable tasks
(`vision_tasks`)."""
