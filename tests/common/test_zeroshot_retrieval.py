"""Zero-shot classification and retrieval's arithmetic on hand-built embeddings, and the paper-faithful tokenisation
against the bundled BERT vocabulary's line numbers."""

from __future__ import annotations

import numpy as np

from flava_jax.common import retrieval, zeroshot
from flava_jax.data.wordpiece import BUNDLED, WordPieceTokenizer

# ids in vocab/bert-base-uncased.txt: line number - 1
CLS, SEP, A, PHOTO, OF, CAT, DOT = 101, 102, 1037, 6302, 1997, 4937, 1012


def test_paper_faithful_prompts_drop_cls_and_sep() -> None:
    encode = WordPieceTokenizer.load(BUNDLED["bert-base-uncased"]).encode
    faithful = zeroshot.prompt_ids(encode, ["cat"], ["a photo of a {}."], special_tokens=False, max_length=77)
    fixed = zeroshot.prompt_ids(encode, ["cat"], ["a photo of a {}."], special_tokens=True, max_length=77)
    assert faithful == [[A, PHOTO, OF, A, CAT, DOT]]  # position 0 is "a", not [CLS]
    assert fixed == [[CLS, A, PHOTO, OF, A, CAT, DOT, SEP]]
    # Truncation keeps max_length word pieces either way (the reference had no special tokens to count).
    assert zeroshot.prompt_ids(encode, ["cat"], ["a photo of a {}."], False, 3) == [[A, PHOTO, OF]]
    assert zeroshot.prompt_ids(encode, ["cat"], ["a photo of a {}."], True, 3) == [[CLS, A, SEP]]


def test_prompts_are_class_major() -> None:
    encode = WordPieceTokenizer.load(BUNDLED["bert-base-uncased"]).encode
    ids = zeroshot.prompt_ids(encode, ["cat", "photo"], ["{}", "a {}"], False, 10)
    assert ids == [[CAT], [A, CAT], [PHOTO], [A, PHOTO]]


def test_class_embeddings_normalise_average_and_normalise_again() -> None:
    # class 0: (3, 4) -> (.6, .8) and (0, 2) -> (0, 1); mean (.3, .9); over its norm sqrt(.9)
    # class 1: (1, 0) twice -> (1, 0)
    out = zeroshot.class_embeddings(np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [5.0, 0.0]]), templates=2)
    np.testing.assert_allclose(out, [[0.3 / np.sqrt(0.9), 0.9 / np.sqrt(0.9)], [1.0, 0.0]], rtol=1e-12)


def test_logits_are_100_times_the_cosine() -> None:
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(zeroshot.logits(np.array([[2.0, 0.0], [1.0, 1.0]]), classes),
                               [[100.0, 0.0], [100 / np.sqrt(2), 100 / np.sqrt(2)]], rtol=1e-12)


def test_top_k_counts_ties_for_the_true_class() -> None:
    scores = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # label 1 first
                       [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # label 1 second
                       [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],   # label 5 sixth
                       [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])  # label 1 tied first
    assert zeroshot.top_k_accuracy(scores, np.array([1, 1, 5, 1])) == {"top1": 0.5, "top5": 0.75}


def test_recalls_on_hand_built_embeddings() -> None:
    # 3 images, 5 texts; texts 0 and 1 are image 0's, 2 is image 1's, 3 and 4 image 2's.
    similarity = np.array([[0.2, 0.9, 0.1, 0.3, 0.0],    # image 0: own text 1 first -> rank 0
                           [0.8, 0.7, 0.6, 0.5, 0.4],    # image 1: own text 2 behind 0, 1 -> rank 2
                           [0.9, 0.8, 0.7, 0.1, 0.2]])   # image 2: best own text 4 behind 0, 1, 2 -> rank 3
    image_of_text = np.array([0, 0, 1, 2, 2])
    # text -> image, per text (column): own image's rank among 3
    # t0: .2 vs .8, .9 -> 2; t1: .9 top -> 0; t2: .6 vs .1, .7 -> 1; t3: .1 vs .3, .5 -> 2; t4: .2 vs 0, .4 -> 1
    np.testing.assert_array_equal(retrieval.ranks_image_to_text(similarity, image_of_text), [0, 2, 3])
    np.testing.assert_array_equal(retrieval.ranks_text_to_image(similarity, image_of_text), [2, 0, 1, 2, 1])
    out = retrieval.recalls(similarity, image_of_text, ks=(1, 3))
    assert out == {"i2t_r1": 1 / 3, "t2i_r1": 1 / 5, "i2t_r3": 2 / 3, "t2i_r3": None}  # k=3 is every image


def test_chance_by_counting() -> None:
    # 2 images with 3 of 6 texts each: a random first text is one of its own half the time.
    assert retrieval.chance(np.array([0, 0, 0, 1, 1, 1]), 2, ks=(1, 5)) == {
        "i2t_r1": 0.5, "t2i_r1": 0.5, "i2t_r5": 1.0, "t2i_r5": None}
    # 4 images, one text each: R@2 by chance is 2/4 both ways (1 - C(3,2)/C(4,2) = 1 - 3/6).
    assert retrieval.chance(np.arange(4), 4, ks=(2,)) == {"i2t_r2": 0.5, "t2i_r2": 0.5}


def test_rerank_reorders_the_first_k_and_keeps_them_above_the_rest() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1],
                       [0.1, 0.2, 0.3, 0.4]])
    asked = []

    def rescore(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        asked.append(sorted(zip(rows.tolist(), columns.tolist(), strict=True)))
        return np.array([{(0, 0): -5.0, (0, 1): 2.0, (1, 3): 0.0, (1, 2): 1.0}[pair]
                         for pair in zip(rows.tolist(), columns.tolist(), strict=True)])

    out = retrieval.rerank(scores, 2, rescore)
    assert asked == [[(0, 0), (0, 1), (1, 2), (1, 3)]]  # each row's first 2, scored once
    # row 0: 1 before 0 (2 > -5), both above 0.7 and 0.1, which keep their order; row 1: 2 before 3
    assert np.argsort(-out[0]).tolist() == [1, 0, 2, 3] and np.argsort(-out[1]).tolist() == [2, 3, 1, 0]
    np.testing.assert_array_equal(out[:, 2:][0], [0.7, 0.1])
    np.testing.assert_array_equal(out[1, :2], [0.1, 0.2])
