"""The sources prepare reads, one module per format, each yielding `rows.WitRow`s and `rows.Skip`s; `dispatch`
picks the reader for a source spec. No reader imports another: what they share is in `rows` (and, for parquet
layouts, `parquet_files`).

* `tsv`: WiT's official TSV shards and the Kaggle variant;
* `json_lines`: "WIT with images" JSON lines (base64 images);
* `tfds_wit`: TFDS `wit`;
* `hub_parquet`: the Hub's parquet copies (theodor1289/wit, the paper's; wikimedia/wit_base; facebook/pmd);
* `img2dataset`: img2dataset output, parquet and webdataset (WiT fetched with it, CC3M, CC12M, SBU);
* `coco`: COCO captions.
"""
