"""BERT's uncased WordPiece (the paper's tokenizer): the same ids as transformers' BertTokenizerFast on every text
of the sample and of BLiMP and on awkward strings, its export, and the grid configs defaulting to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flava_jax.data import records
from flava_jax.data.prepare import prepare, read_stream, tokenizer_path
from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.tokenizer import load_tokenizer, make_tokenizer
from flava_jax.data.wordpiece import BUNDLED, WordPieceTokenizer
from tests.configs import REPO, load_config, prepare_settings

transformers = pytest.importorskip("transformers", reason="the reference tokenizer is transformers' (eval extra)")
VOCAB = BUNDLED["bert-base-uncased"]
AWKWARD = ["Émigré café naïve", "Hello,world!!", "$5.00 ^_^ `x` ~tilde~", "中文字符 mixed", "a\u0000b\ufffdc\u200bd",
           "tab\there\nnewline\r", "x" * 101, "y" * 100, "supercalifragilisticexpialidocious", "don't U.S.A.", "",
           "   ", "a\x01b\x7fc\x1fd e\x0bf", "back\\slash|pipe {curly} [sq] <ang> @#%&*",
           "\ufb01 ligature", "Ω ≈ ∑ §", "İstanbul ẞ groß", "\u00a0nbsp\u3000ideographic space", "emoji 🙂 ok"]


@pytest.fixture(scope="module")
def bert() -> tuple[WordPieceTokenizer, object]:
    return WordPieceTokenizer.load(VOCAB), transformers.BertTokenizerFast(vocab=str(VOCAB), do_lower_case=True)


def _same_ids(ours: WordPieceTokenizer, hf: object, texts: list[str]) -> None:
    theirs = hf(texts)["input_ids"]
    bad = [(t, a, b) for t, a, b in zip(texts, (ours.encode(t, 10**6) for t in texts), theirs, strict=True) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:2]}"


def test_special_tokens_and_awkward_strings(bert: tuple[WordPieceTokenizer, object]) -> None:
    ours, hf = bert
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id, ours.vocab_size) == (
        0, 100, 101, 102, 103, 30522)
    assert ours.encode("The cat sat.", 16) == [101, 1996, 4937, 2938, 1012, 102]  # BERT's ids, by hand
    _same_ids(ours, hf, AWKWARD)
    long = "Greek coins from Pompeii " * 50
    assert ours.encode(long, 16) == hf(long, truncation=True, max_length=16)["input_ids"]


def test_every_text_of_the_sample(bert: tuple[WordPieceTokenizer, object], tmp_path: Path) -> None:
    settings = prepare_settings(text_words=-1, images=-1, heldout_fraction=0.25, image_size=32, download=False,
                                image_dirs=(str(SAMPLE_DIR / "images"),), tokenizer="bert-base-uncased")
    manifest = prepare(settings, [str(SAMPLE_DIR / "wit")], tmp_path)
    assert manifest["tokenizer"]["source"] == "bert-base-uncased"
    assert manifest["tokenizer"]["sha256"] == "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    assert tokenizer_path(tmp_path).read_bytes() == VOCAB.read_bytes()
    texts = [records.decode_text(r) for stream in ("text", "pair", "heldout")
             for r in read_stream(tmp_path, stream)]
    assert len(texts) > 10
    _same_ids(load_tokenizer(tokenizer_path(tmp_path)), bert[1], texts)


@pytest.mark.slow
def test_every_text_of_blimp(bert: tuple[WordPieceTokenizer, object], shared_data: Path, tmp_path: Path) -> None:
    """Ours, and the tokenizer an export carries, against BertTokenizerFast on all 134,000 BLiMP sentences."""
    texts = [row[key] for path in sorted((shared_data / "blimp").glob("*.jsonl"))
             for row in map(json.loads, path.read_text().splitlines()) for key in ("sentence_good", "sentence_bad")]
    assert len(texts) == 134_000
    _same_ids(*bert, texts)
    bert[0].save_pretrained(tmp_path)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)(texts)["input_ids"] == bert[1](texts)["input_ids"]


def test_export_loads_as_bert_with_the_same_ids(bert: tuple[WordPieceTokenizer, object], tmp_path: Path) -> None:
    ours, _ = bert
    ours.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ in ("BertTokenizer", "BertTokenizerFast") and loaded.do_lower_case
    _same_ids(ours, loaded, AWKWARD)
    assert loaded("Dogs bark.").word_ids() == [None, 0, 1, 2, None]  # punctuation is a word of its own


def test_vocabularies_by_name_file_or_directory(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes(VOCAB.read_bytes())
    for kind in ("bert-base-uncased", str(tmp_path), str(tmp_path / "vocab.txt")):
        tokenizer, name = make_tokenizer(kind, iter(()), 512)
        assert name == "vocab.txt" and tokenizer.vocab_size == 30522
    with pytest.raises(ValueError, match="config.data.tokenizer: 'bert-base-cased' is not"):
        make_tokenizer("bert-base-cased", iter(()), 512)


def test_the_grid_configs_use_the_papers_tokenizer() -> None:
    grid = sorted(p.stem for p in (REPO / "configs").glob("[0-9]*M_*.py"))
    assert len(grid) == 8
    for name in grid:
        config = load_config(name)
        assert config.data.tokenizer == "bert-base-uncased", name
        assert config.model.text_config.vocab_size == 30522, name
    assert load_config("base").data.tokenizer == "bert-base-uncased"
