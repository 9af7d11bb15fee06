"""A SentencePiece tokenizer trained on the budgeted text, with BERT's special tokens at fixed ids.

[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; an encoded text is [CLS] pieces [SEP], padded with [PAD].
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))


class Tokenizer:
    """Text <-> ids with a trained SentencePiece model (`Tokenizer.train` or `Tokenizer.load`)."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        pieces = tuple(self._sp.id_to_piece(i) for i in range(len(SPECIAL_TOKENS)))
        if pieces != SPECIAL_TOKENS:
            raise ValueError(f"not a flava_jax tokenizer: ids 0-4 are {pieces}, expected {SPECIAL_TOKENS}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
        """Train a unigram model on `texts`; the vocabulary may come out smaller on a tiny corpus."""
        proto = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size, hard_vocab_limit=False,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1, pad_piece=SPECIAL_TOKENS[PAD_ID],
            unk_piece=SPECIAL_TOKENS[UNK_ID], user_defined_symbols=list(SPECIAL_TOKENS[CLS_ID:]),
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc", shuffle_input_sentence=False,
            minloglevel=2)
        return cls(proto.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, max_length: int) -> list[int]:
        """[CLS] ids [SEP], truncated to `max_length` tokens in all."""
        return [CLS_ID, *self._sp.encode(text)[: max_length - 2], SEP_ID]

    def encode_batch(self, texts: Iterable[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention_mask), each (len(texts), max_length) int32, padded with [PAD]."""
        rows = [self.encode(t, max_length) for t in texts]
        ids = np.full((len(rows), max_length), PAD_ID, np.int32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids, (ids != PAD_ID).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) >= len(SPECIAL_TOKENS)])
