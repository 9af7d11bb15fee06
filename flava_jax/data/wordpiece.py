"""BERT's uncased WordPiece tokenizer (the paper's: `bert-base-uncased`), in plain Python, with the ids of
`transformers.BertTokenizerFast(vocab_file=..., do_lower_case=True)`.

Text is cleaned (NUL, U+FFFD and control characters dropped, whitespace made spaces), CJK ideographs spaced out,
lower-cased with accents stripped, split at whitespace and punctuation, and each word cut greedily into the longest
vocabulary pieces ("##" marks a continuation; a word with no cut, or over 100 characters, is [UNK]). An encoded
text is [CLS] pieces [SEP]. Nothing is trained: the vocabulary is a `vocab.txt`, one token per line.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VOCAB_FILE = "vocab.txt"
BUNDLED = {"bert-base-uncased": Path(__file__).with_name("vocab") / "bert-base-uncased.txt"}
_MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_punctuation(char: str) -> bool:
    """ASCII symbols count as punctuation too ("$", "^", "`"), as in BERT."""
    cp = ord(char)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(char).startswith("P")


def _clean(text: str) -> str:
    out = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD:
            continue
        category = unicodedata.category(char)
        if char in " \t\n\r" or category == "Zs":
            out.append(" ")
        elif category in ("Cc", "Cf"):
            continue
        elif any(lo <= cp <= hi for lo, hi in _CJK):
            out.append(f" {char} ")
        else:
            out.append(char)
    return "".join(out)


# ASCII text, most of it, goes through one str.translate: tab, newline and return to spaces, other control
# characters dropped, punctuation spaced out; the same words as the general path, without a Python loop per character.
_ASCII = str.maketrans({**{chr(c): None for c in (*range(32), 127)}, "\t": " ", "\n": " ", "\r": " ",
                        **{chr(c): f" {chr(c)} " for c in range(33, 127) if _is_punctuation(chr(c))}})


def _words(text: str) -> list[str]:
    """Lower-cased, accent-stripped words, punctuation characters as words of their own."""
    if text.isascii():
        return text.translate(_ASCII).lower().split()
    text = "".join(c for c in unicodedata.normalize("NFD", _clean(text).lower()) if unicodedata.category(c) != "Mn")
    words = []
    for chunk in text.split():
        start = 0
        for i, char in enumerate(chunk):
            if _is_punctuation(char):
                words += [chunk[start:i], char] if i > start else [char]
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def transformers_for_export() -> Any:
    """The transformers module, which a tokenizer's export needs (the eval extra)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError("exporting the tokenizer for transformers needs the eval extra: "
                          "pip install 'flava_jax[eval]'") from e
    return transformers


class WordPieceTokenizer:
    """Text <-> ids with a BERT vocabulary (`WordPieceTokenizer.load(vocab.txt)`)."""

    def __init__(self, vocab: list[str]) -> None:
        self.tokens = vocab
        self.ids = {token: i for i, token in enumerate(vocab)}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in self.ids]
        if missing:
            raise ValueError(f"not a BERT vocabulary: {missing} missing")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
        if self.pad_id != 0:  # batches pad with 0, as the model's pad_token_id
            raise ValueError(f"[PAD] is id {self.pad_id} in this vocabulary; flava_jax pads with id 0")
        self._pieces = functools.lru_cache(maxsize=2**16)(self._word_pieces)

    def __getstate__(self) -> list[str]:  # picklable for Grain's worker processes
        return self.tokens

    def __setstate__(self, vocab: list[str]) -> None:
        self.__init__(vocab)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        return cls(Path(path).read_text(encoding="utf-8").splitlines())

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text("".join(t + "\n" for t in self.tokens), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _word_pieces(self, word: str) -> tuple[int, ...]:
        if len(word) > _MAX_WORD_CHARS:
            return (self.unk_id,)
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    start = end
                    break
            else:
                return (self.unk_id,)
        return tuple(pieces)

    def encode(self, text: str, max_length: int) -> list[int]:
        """[CLS] ids [SEP], truncated to `max_length` tokens in all."""
        ids = [i for word in _words(text) for i in self._pieces(word)]
        return [self.cls_id, *ids[: max_length - 2], self.sep_id]

    def decode(self, ids: Iterable[int]) -> str:
        special = {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}
        text = " ".join(self.tokens[int(i)] for i in ids if int(i) not in special)
        return text.replace(" ##", "")

    def save_pretrained(self, out_dir: str | os.PathLike, model_max_length: int = 512) -> None:
        """Write vocab.txt and a `transformers.BertTokenizerFast` (uncased) that `AutoTokenizer.from_pretrained`
        loads with the same ids. Needs transformers (the eval extra)."""
        transformers = transformers_for_export()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.save(out / VOCAB_FILE)
        transformers.BertTokenizerFast(vocab=str(out / VOCAB_FILE), do_lower_case=True,
                                       model_max_length=model_max_length).save_pretrained(str(out))
