"""The run's tokenizer: BERT's uncased WordPiece vocabulary (the paper's, `data.tokenizer="bert-base-uncased"`, in
wordpiece.py) or a SentencePiece model trained on the budgeted text (`data.tokenizer="sentencepiece"`, here).

Both encode a text as [CLS] pieces [SEP] and pad with [PAD]=0, and carry their special ids (`cls_id`, `sep_id`,
`mask_id`, `unk_id`, `pad_id`). The SentencePiece one has [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sentencepiece as spm

from flava_jax.data.wordpiece import BUNDLED, VOCAB_FILE, WordPieceTokenizer, transformers_for_export

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
SENTENCEPIECE_FILE = "tokenizer.model"


class Tokenizer:
    """Text <-> ids with a trained SentencePiece model (`Tokenizer.train` or `Tokenizer.load`)."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        pieces = tuple(self._sp.id_to_piece(i) for i in range(len(SPECIAL_TOKENS)))
        if pieces != SPECIAL_TOKENS:
            raise ValueError(f"not a flava_jax tokenizer: ids 0-4 are {pieces}, expected {SPECIAL_TOKENS}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID

    def __getstate__(self) -> bytes:  # picklable for Grain's worker processes
        return self.model_proto

    def __setstate__(self, model_proto: bytes) -> None:
        self.__init__(model_proto)

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
        """[CLS] ids [SEP], truncated to `max_length` tokens in all.

        Matches the HF export on all text except literal special-token strings such as "[MASK]" inside it, which
        SentencePiece prefixes with a word-boundary piece and HF does not."""
        return [CLS_ID, *self._sp.encode(text)[: max_length - 2], SEP_ID]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) >= len(SPECIAL_TOKENS)])

    # ------------------------------------------------------------------------------------- HF export
    def to_hf(self) -> Any:
        """The same tokenizer as a `tokenizers.Tokenizer` (HF fast): same normaliser, pieces, scores and ids, and
        [CLS] text [SEP] added by its post-processor. Needs the `tokenizers` package (the eval extra)."""
        from sentencepiece import sentencepiece_model_pb2
        from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import Unigram

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_proto)
        norm = proto.normalizer_spec
        hf = HFTokenizer(Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=UNK_ID, byte_fallback=False))
        # SentencePiece's normalisation, in its order (as transformers' SpmConverter builds it).
        steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
        if norm.remove_extra_whitespaces:
            steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
        if norm.escape_whitespaces:
            steps.append(normalizers.Replace(" ", "\u2581"))
        if norm.add_dummy_prefix:
            steps.append(normalizers.Replace(Regex("\\A\u2581"), "\u2581\u2581"))  # Metaspace skips an existing one
        hf.normalizer = normalizers.Sequence(steps)
        if norm.add_dummy_prefix:
            # split=True: the same pieces (Unigram never crosses a "\u2581" it did not start with), and word_ids()
            # giving one word per whitespace word, which word-level tools read (split=False gave every token word 0).
            hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
        hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(),
                                        decoders.Strip(content=" ", left=1)])
        hf.add_special_tokens(list(SPECIAL_TOKENS))
        cls, sep = SPECIAL_TOKENS[CLS_ID], SPECIAL_TOKENS[SEP_ID]
        hf.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, CLS_ID), (sep, SEP_ID)])
        return hf

    def save_pretrained(self, out_dir: str | os.PathLike, model_max_length: int = 512) -> None:
        """Write tokenizer.model plus an HF fast tokenizer (tokenizer.json, tokenizer_config.json, ...) that
        `transformers.AutoTokenizer.from_pretrained(out_dir)` loads with the same ids. Needs transformers."""
        transformers = transformers_for_export()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.save(out / SENTENCEPIECE_FILE)
        pad, unk, cls, sep, mask = SPECIAL_TOKENS
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=self.to_hf(), pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep, mask_token=mask,
            model_max_length=model_max_length, clean_up_tokenization_spaces=False,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"])
        fast.save_pretrained(str(out))


AnyTokenizer = Tokenizer | WordPieceTokenizer


def load_tokenizer(path: str | os.PathLike) -> AnyTokenizer:
    """The tokenizer saved at `path`: a WordPiece vocab.txt, or a SentencePiece model."""
    return WordPieceTokenizer.load(path) if Path(path).suffix == ".txt" else Tokenizer.load(path)


def make_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> tuple[AnyTokenizer, str]:
    """(tokenizer, its file name) for `data.tokenizer`: "sentencepiece" trains one on `texts`; "bert-base-uncased"
    is BERT's vocabulary bundled in the package; a path names a BERT vocab.txt or a directory holding one."""
    if kind == "sentencepiece":
        return Tokenizer.train(texts, vocab_size), SENTENCEPIECE_FILE
    path = BUNDLED.get(kind) or Path(kind).expanduser()
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise ValueError(f"config.data.tokenizer: {kind!r} is not 'sentencepiece', one of {sorted(BUNDLED)}, a BERT "
                         f"vocab.txt or a directory holding one")
    return WordPieceTokenizer.load(path), VOCAB_FILE
