"""The SentencePiece tokenizer trained by prepare, and its HF fast export: the same ids on every text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flava_jax.data import records
from flava_jax.data.prepare import prepare, read_stream
from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, Tokenizer
from tests.configs import prepare_settings

transformers = pytest.importorskip("transformers", reason="the HF export needs transformers (the eval extra)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer, object]:
    """The bundled sample prepared (its tokenizer trained on its budgeted text), then exported for transformers."""
    root = tmp_path_factory.mktemp("tok")
    prepare(prepare_settings(text_words=-1, images=-1, vocab_size=30522, heldout_fraction=0.25, image_size=32,
                             image_dirs=(str(SAMPLE_DIR / "images"),), download=False), [str(SAMPLE_DIR / "wit")],
            root / "data")
    tokenizer = Tokenizer.load(root / "data" / "tokenizer.model")
    tokenizer.save_pretrained(root / "export")
    return root, tokenizer, transformers.AutoTokenizer.from_pretrained(root / "export")


def _same_ids(tokenizer: Tokenizer, hf: object, texts: list[str]) -> None:
    ours = [tokenizer.encode(t, 10**6) for t in texts]
    theirs = hf(texts)["input_ids"]
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:2]}"


def test_special_tokens(exported: tuple[Path, Tokenizer, object]) -> None:
    _, tokenizer, hf = exported
    assert [hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id] == [
        PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID]
    assert hf.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert tokenizer.encode("", 8) == [CLS_ID, SEP_ID] == hf("")["input_ids"]
    pair = hf("a cat", "the coins")
    assert pair["input_ids"][0] == CLS_ID and pair["input_ids"].count(SEP_ID) == 2
    assert set(pair["token_type_ids"]) == {0, 1}
    # Truncation keeps [CLS] ... [SEP] on both sides.
    long = "Greek coins from Pompeii " * 50
    assert tokenizer.encode(long, 16) == hf(long, truncation=True, max_length=16)["input_ids"]


def test_every_text_of_the_sample(exported: tuple[Path, Tokenizer, object]) -> None:
    root, tokenizer, hf = exported
    texts = [records.decode_text(r) for stream in ("text", "pair", "heldout") for r in read_stream(root / "data",
                                                                                                   stream)]
    assert len(texts) > 10
    _same_ids(tokenizer, hf, texts)


@pytest.mark.slow
def test_every_text_of_blimp(exported: tuple[Path, Tokenizer, object], shared_data: Path) -> None:
    _, tokenizer, hf = exported
    texts = []
    for path in sorted((shared_data / "blimp").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts += [row["sentence_good"], row["sentence_bad"]]
    assert len(texts) == 134_000
    _same_ids(tokenizer, hf, texts)
