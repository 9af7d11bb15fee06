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


def _whitespace_words(text: str) -> list[int | None]:
    """What word_ids() must give a SentencePiece export: None, then each piece's whitespace word, then None."""
    return [None, *range(len(text.split())), None]


def _joined_words_copy(hf: object) -> object:
    """The export as it was before word splitting: Metaspace with split=False (every token in word 0)."""
    old = json.loads(hf.backend_tokenizer.to_str())
    old["pre_tokenizer"]["split"] = False
    copy = transformers.PreTrainedTokenizerFast(tokenizer_object=type(hf.backend_tokenizer).from_str(json.dumps(old)))
    assert copy("a b").word_ids() == [None, 0, 0, None]  # the defect, reproduced
    return copy


def _check_words(hf: object, texts: list[str]) -> None:
    """One word id per whitespace word (words of several pieces repeat it), and the ids of the export before."""
    old = _joined_words_copy(hf)
    encoded, before = hf(texts), old(texts)["input_ids"]
    wrong = []
    for i, text in enumerate(texts):
        words = encoded.word_ids(i)
        collapsed = [w for j, w in enumerate(words) if w is None or j == 0 or w != words[j - 1]]
        if collapsed != _whitespace_words(text):
            wrong.append((text, words))
    assert not wrong, f"{len(wrong)} of {len(texts)} texts get other words, e.g. {wrong[:2]}"
    changed = [t for t, a, b in zip(texts, encoded["input_ids"], before, strict=True) if a != b]
    assert not changed, f"{len(changed)} texts get other ids than the export before, e.g. {changed[:2]}"


def test_word_ids_are_the_whitespace_words_on_the_sample(exported: tuple[Path, Tokenizer, object]) -> None:
    root, _, hf = exported
    texts = [records.decode_text(r) for stream in ("text", "pair", "heldout") for r in read_stream(root / "data",
                                                                                                   stream)]
    _check_words(hf, texts + ["  two  spaces ", "", "a\tb"])


@pytest.mark.slow
def test_word_ids_are_the_whitespace_words_on_blimp(exported: tuple[Path, Tokenizer, object],
                                                     shared_data: Path) -> None:
    texts = [row[key] for path in sorted((shared_data / "blimp").glob("*.jsonl"))
             for row in map(json.loads, path.read_text().splitlines()) for key in ("sentence_good", "sentence_bad")]
    _check_words(exported[2], texts)


def test_within_word_l2r_reads_words_of_old_exports_too(exported: tuple[Path, Tokenizer, object]) -> None:
    """The evaluator's words come from the export's word_ids(); an export written before word splitting is read on
    the text split at whitespace, giving the same words."""
    from flava_jax.eval.torch_pll import word_ids

    _, _, hf = exported
    text = "Greek coins from Pompeii were found."
    ids = hf(text)["input_ids"]
    assert word_ids(hf, [text], [ids]) == [hf(text).word_ids()]
    assert word_ids(_joined_words_copy(hf), [text], [ids]) == [hf(text).word_ids()]
