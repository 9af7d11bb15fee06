"""The PyTorch evaluator on an export: BLiMP PLL against an independent transformers computation and against the
JAX scorer the trainer uses, pseudo-perplexity, malformed lines, bad exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from flava_jax import FlavaConfig, FlavaForPreTraining, save_pretrained
from flava_jax.common.pll import LN2, pseudo_perplexity
from flava_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, Tokenizer
from flava_jax.data.wordpiece import BUNDLED, WordPieceTokenizer
from flava_jax.eval.cli import evaluate
from flava_jax.model.hf_io import from_pretrained
from flava_jax.train.pll_scorer import PLLScorer
from tests.configs import REPO

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PARADIGMS = ("adjunct_island", "anaphor_gender_agreement", "determiner_noun_agreement_1",
             "regular_plural_subject_verb_agreement_1")


@pytest.fixture(scope="module")
def blimp_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "blimp").is_dir():
        pytest.skip(f"needs real BLiMP in {SHARED_DATA / 'blimp'} (present in CI, absent in a fresh clone)")
    out = tmp_path_factory.mktemp("blimp")
    for name in PARADIGMS:
        lines = (SHARED_DATA / "blimp" / f"{name}.jsonl").read_text().splitlines()[:6]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return out


def _independent_logprobs(model: Any, ids: list[int], mask_id: int) -> np.ndarray:
    """Natural-log probability of each inner token of `ids` the plain way: HF's whole forward on the masked copies
    of one sentence, MLM logits at the masked positions (HF's own boolean selection)."""
    ids_t = torch.tensor(ids)
    n = len(ids_t) - 2
    copies = ids_t.repeat(n, 1)
    labels = torch.full_like(copies, -100)
    for row in range(n):
        labels[row, row + 1] = ids_t[row + 1]
        copies[row, row + 1] = mask_id
    with torch.no_grad():
        out = model(input_ids=ids_t.repeat(n, 1), input_ids_masked=copies, mlm_labels=labels)
    logp = torch.log_softmax(out.mlm_logits.double(), dim=-1)
    return logp[torch.arange(n), ids_t[1:-1]].numpy()


def _independent_pll(model: Any, tokenizer: Any, sentence: str) -> float:
    """log2 PLL of `sentence` from `_independent_logprobs`."""
    return float(_independent_logprobs(model, tokenizer(sentence)["input_ids"], tokenizer.mask_token_id).sum()) / LN2


@pytest.mark.parametrize("text", [dict(num_hidden_layers=1, qkv_bias=False, hidden_act="gelu_new"),
                                  dict(num_hidden_layers=3)], ids=["one_layer_no_qkv_bias_tanh_gelu", "three_layers"])
def test_torch_scorer_matches_hfs_whole_forward_on_other_encoders(text: dict) -> None:
    """TorchPLL's own layer code (the first layer's shared projections, the last at the scored position, buffers
    reused across batches of different shapes) against HF's forward, on encoders unlike the tiny preset's."""
    from flava_jax.eval.torch_pll import TorchPLL

    hf = FlavaConfig.from_preset("tiny").to_hf_dict()
    hf["text_config"].update(text)
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(transformers.FlavaConfig(**hf)).eval()
    with torch.no_grad():  # weights spread out, so that scores differ clearly between tokens
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    sentences = [[CLS_ID, *rng.integers(5, 512, n).tolist(), SEP_ID] for n in (1, 7, 3, 12, 7, 30)]
    # A small token budget: many batches, each padded to its own longest copy.
    got = TorchPLL(model, MASK_ID, PAD_ID, batch_tokens=64).token_logprobs(sentences)
    for ids, values in zip(sentences, got, strict=True):
        np.testing.assert_allclose(values, _independent_logprobs(model, ids, MASK_ID), atol=1e-5)


@pytest.mark.slow
def test_blimp_matches_transformers_and_the_jax_scorer(export: Path, blimp_subset: Path, tmp_path: Path) -> None:
    results = evaluate(export, ["blimp"], blimp_subset, tmp_path)
    predictions = [json.loads(line) for line in (tmp_path / "blimp_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == results["blimp"]["pairs"] == 6 * len(PARADIGMS)

    model = transformers.FlavaForPreTraining.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    rows = {(name, i): json.loads(line)
            for name in PARADIGMS for i, line in enumerate((blimp_subset / f"{name}.jsonl").read_text().splitlines())}
    by_paradigm: dict[str, list[bool]] = {}
    for p in predictions:
        row = rows[(p["paradigm"], p["index"])]
        good, bad = (_independent_pll(model, tokenizer, row[k]) for k in ("sentence_good", "sentence_bad"))
        assert p["pll_good"] == pytest.approx(good, abs=1e-4) and p["pll_bad"] == pytest.approx(bad, abs=1e-4)
        by_paradigm.setdefault(p["paradigm"], []).append(good >= bad)
    assert results["blimp"]["paradigms"] == {k: float(np.mean(v)) for k, v in sorted(by_paradigm.items())}
    assert 0 < results["blimp"]["accuracy"] < 1
    assert (tmp_path / "results.md").read_text().count("| ") > 5 and (tmp_path / "blimp_phenomena.png").stat().st_size

    # The JAX scorer the trainer uses, on the same export, gives the same per-sentence scores.
    config, params = from_pretrained(export)
    scorer = PLLScorer(FlavaForPreTraining(config), MASK_ID, PAD_ID, batch_size=64)
    texts = [rows[(p["paradigm"], p["index"])]["sentence_good"] for p in predictions]
    jax_scores = scorer.token_logprobs(params, [tokenizer(t)["input_ids"] for t in texts])
    for p, lp in zip(predictions, jax_scores, strict=True):
        assert lp.sum() / LN2 == pytest.approx(p["pll_good"], abs=1e-4)


@pytest.mark.slow
def test_pppl_matches_the_jax_scorer(export: Path, tmp_path: Path) -> None:
    texts = ["The old lighthouse stands on a rocky island.", "A clock with moving hands.",
             "Coins from the Roman empire were found near the river in the spring of that year."]
    (tmp_path / "pppl.txt").write_text("\n".join(texts) + "\n\n")
    results = evaluate(export, ["pppl"], tmp_path, tmp_path / "out")["pppl"]
    config, params = from_pretrained(export)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    expected = pseudo_perplexity(PLLScorer(FlavaForPreTraining(config), MASK_ID, PAD_ID, batch_size=64).token_logprobs(
        params, [tokenizer(t)["input_ids"] for t in texts]))
    assert results["texts"] == 3
    assert results["pppl"] == pytest.approx(expected["pppl"], rel=1e-4)
    assert results["pppl_token_weighted"] == pytest.approx(expected["pppl_token_weighted"], rel=1e-4)
    assert results["pppl"] != pytest.approx(results["pppl_token_weighted"], rel=1e-3)


@pytest.mark.slow
def test_pppl_reads_prepared_datas_held_out_split(export: Path, debug_data: Path, tmp_path: Path) -> None:
    """--pppl_file=DATA (a prepare directory) scores the held-out texts, as the same texts in a file would."""
    from flava_jax.data import prepare, records

    texts = [records.decode_text(r) for r in prepare.read_stream(debug_data, "heldout")]
    assert len(texts) == json.loads((debug_data / "manifest.json").read_text())["kept"]["heldout"] > 1
    (tmp_path / "pppl.txt").write_text("\n".join(texts) + "\n")
    from_file = evaluate(export, ["pppl"], tmp_path, tmp_path / "a")["pppl"]
    from_data = evaluate(export, ["pppl"], tmp_path, tmp_path / "b", pppl_file=debug_data)["pppl"]
    assert from_data == from_file and from_data["texts"] == len(texts)


@pytest.mark.slow
def test_a_malformed_line_is_reported_and_skipped(export: Path, blimp_subset: Path, tmp_path: Path) -> None:
    data = tmp_path / "blimp"
    shutil.copytree(blimp_subset, data)
    path = data / f"{PARADIGMS[0]}.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"sentence_good": "no bad sentence"}', "not json", *lines[1:]]) + "\n")
    result = subprocess.run([sys.executable, "-m", "flava_jax.evaluate", f"--model={export}", f"--data={data}",
                             f"--out={tmp_path / 'out'}", "--tasks=blimp"], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{path}:2: skipped" in result.stderr and f"{path}:3: skipped" in result.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())["blimp"]
    assert results["skipped_lines"] == 2 and results["pairs"] == 6 * len(PARADIGMS)


@pytest.mark.slow
def test_bad_exports_fail_with_a_clear_message(export: Path, debug_data: Path, blimp_subset: Path,
                                               tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(export, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    small = FlavaConfig.from_preset("tiny").replace(text_config={"vocab_size": 64})
    save_pretrained(small, FlavaForPreTraining(small).init_params(jax.random.key(1)), tmp_path / "small",
                    tokenizer=Tokenizer.load(debug_data / "tokenizer.model"))
    # A pickle without safetensors is taken for the paper's layout and converted: through weights_only, refused.
    for model, message in ((pickled, "could not be read with torch.load(weights_only=True)"),
                           (tmp_path / "small", "does not match the model's")):
        result = subprocess.run([sys.executable, "-m", "flava_jax.evaluate", f"--model={model}",
                                 f"--data={blimp_subset}", f"--out={tmp_path / 'out'}"], cwd=REPO,
                                capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_full_blimp_on_the_tiny_model(export: Path, shared_data: Path, tmp_path: Path) -> None:
    """All 67 paradigms: every line of every file read, then 3 pairs of each scored (every pair is
    `python benchmarks/eval.py --full_blimp`): 12 phenomena and a headline that is their mean, not the
    paradigms'."""
    from flava_jax.common.blimp import PHENOMENA, read_blimp

    files = sorted((shared_data / "blimp").glob("*.jsonl"))
    pairs, problems = read_blimp(shared_data / "blimp")
    assert not problems and len(pairs) == sum(1 for f in files for _ in f.open())
    assert {p.paradigm for p in pairs} == {f.stem for f in files} and {p.phenomenon for p in pairs} == set(PHENOMENA)
    results = evaluate(export, ["blimp"], shared_data / "blimp", tmp_path, limit=3)["blimp"]
    assert len(results["paradigms"]) == 67 and len(results["phenomena"]) == 12 and results["pairs"] == 3 * 67
    assert results["accuracy"] == pytest.approx(np.mean(list(results["phenomena"].values())))
    assert results["accuracy"] != pytest.approx(np.mean(list(results["paradigms"].values())))


def _independent_l2r_pll(model: Any, tokenizer: Any, sentence: str) -> tuple[float, int]:
    """(log2 within-word-l2r PLL, copies masking more than one token) the plain way: words from the tokenizer's own
    `word_ids()`; the copy scoring a piece also masks the later pieces of its word; HF's whole forward, MLM logits
    at the scored positions."""
    encoded = tokenizer(sentence)
    ids, words = torch.tensor(encoded["input_ids"]), encoded.word_ids()
    n = len(ids) - 2
    copies = ids.repeat(n, 1)
    labels = torch.full_like(copies, -100)
    longer = 0
    for i in range(1, n + 1):
        labels[i - 1, i] = ids[i]
        end = i + 1
        while end <= n and words[end] == words[i]:
            end += 1
        copies[i - 1, i:end] = tokenizer.mask_token_id
        longer += end > i + 1
    with torch.no_grad():
        out = model(input_ids=ids.repeat(n, 1), input_ids_masked=copies, mlm_labels=labels)
    logp = torch.log_softmax(out.mlm_logits.double(), dim=-1)
    return float(logp[torch.arange(n), ids[1:-1]].sum()) / LN2, longer


def _check_l2r(export: Path, blimp_subset: Path, out: Path, every: int) -> int:
    """The within-word-l2r PLLs the evaluator wrote to `out` for every `every`-th pair against
    `_independent_l2r_pll`; returns how many copies masked more than one piece."""
    model = transformers.FlavaForPreTraining.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    predictions = [json.loads(line) for line in (out / "blimp_predictions.jsonl").read_text().splitlines()]
    rows = {(name, i): json.loads(line)
            for name in PARADIGMS for i, line in enumerate((blimp_subset / f"{name}.jsonl").read_text().splitlines())}
    multi_piece = 0
    for p in predictions[::every]:  # a few sentences: the whole forward per sentence is slow
        row = rows[(p["paradigm"], p["index"])]
        for side in ("good", "bad"):
            expected, longer = _independent_l2r_pll(model, tokenizer, row[f"sentence_{side}"])
            assert p[f"pll_{side}_within_word_l2r"] == pytest.approx(expected, abs=1e-4)
            multi_piece += longer
            if longer:  # masking more pieces can only change the score
                assert p[f"pll_{side}_within_word_l2r"] != pytest.approx(p[f"pll_{side}"], abs=1e-3)
    return multi_piece


@pytest.mark.slow
def test_within_word_l2r_with_berts_wordpiece(blimp_subset: Path, tmp_path: Path) -> None:
    """The paper's tokenizer: words are BERT's (punctuation split off), read from the export's word_ids()."""
    config = FlavaConfig.from_preset("tiny").replace(text_config=dict(vocab_size=30522))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                          FlavaForPreTraining(config).init_params(jax.random.key(0)))
    save_pretrained(config, params, tmp_path / "export",
                    tokenizer=WordPieceTokenizer.load(BUNDLED["bert-base-uncased"]))
    evaluate(tmp_path / "export", ["blimp"], blimp_subset, tmp_path / "eval", pll=["original", "within_word_l2r"])
    assert _check_l2r(tmp_path / "export", blimp_subset, tmp_path / "eval", every=1) > 0


@pytest.mark.slow
def test_within_word_l2r_matches_transformers_and_the_jax_scorer(export: Path, blimp_subset: Path,
                                                                 tmp_path: Path) -> None:
    results = evaluate(export, ["blimp"], blimp_subset, tmp_path, pll=["original", "within_word_l2r"])
    l2r = results["blimp_within_word_l2r"]
    assert l2r.keys() == results["blimp"].keys() and set(l2r["phenomena"]) == set(results["blimp"]["phenomena"])
    assert (tmp_path / "blimp_within_word_l2r_phenomena.png").stat().st_size
    assert "## BLiMP, within-word-l2r PLL" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["blimp_within_word_l2r"] == l2r

    assert _check_l2r(export, blimp_subset, tmp_path, every=4) > 10

    # The JAX scorer, given the same word indices, agrees.
    from flava_jax.eval.torch_pll import word_ids

    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    predictions = [json.loads(line) for line in (tmp_path / "blimp_predictions.jsonl").read_text().splitlines()]
    rows = {(name, i): json.loads(line)
            for name in PARADIGMS for i, line in enumerate((blimp_subset / f"{name}.jsonl").read_text().splitlines())}
    config, params = from_pretrained(export)
    texts = [rows[(p["paradigm"], p["index"])]["sentence_good"] for p in predictions]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    scores = PLLScorer(FlavaForPreTraining(config), MASK_ID, PAD_ID, batch_size=64).token_logprobs(
        params, ids, word_ids(tokenizer, texts, ids))
    for p, lp in zip(predictions, scores, strict=True):
        assert lp.sum() / LN2 == pytest.approx(p["pll_good_within_word_l2r"], abs=1e-4)


@pytest.mark.slow
def test_unknown_pll_metric_is_refused(export: Path, blimp_subset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--pll"):
        evaluate(export, ["blimp"], blimp_subset, tmp_path, pll=["l2r"])


@pytest.mark.parametrize("flag", ["--limit=-5", "--finetune_max_steps=0", "--finetune_train_limit=-1"])
def test_counts_must_be_positive(flag: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "flava_jax.evaluate", f"--model={tmp_path}", f"--out={tmp_path}",
               f"--data={tmp_path}", flag]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    value = flag.split("=")[1]
    assert result.returncode != 0 and f"flag {flag}: {value} is not a positive integer" in result.stderr
    assert len(result.stderr.splitlines()) <= 3, result.stderr


def test_stray_files_beside_blimp_are_ignored_or_refused(tmp_path: Path) -> None:
    """A directory holding blimp/ and a stray notes.jsonl: BLiMP is read from blimp/; with the strict flag, a stray
    file inside blimp/ is refused before any scoring."""
    from flava_jax.common.blimp import BlimpError
    from flava_jax.eval.cli import blimp_directory, evaluate_blimp

    (tmp_path / "blimp").mkdir()
    pair = json.dumps({"sentence_good": "Tom saw himself.", "sentence_bad": "Tom saw herself."}) + "\n"
    (tmp_path / "blimp" / "anaphor_gender_agreement.jsonl").write_text(pair)
    (tmp_path / "notes.jsonl").write_text(pair)
    assert blimp_directory(tmp_path) == tmp_path / "blimp"
    (tmp_path / "blimp" / "notes.jsonl").write_text(pair)
    with pytest.raises(BlimpError, match=r"notes\.jsonl"):
        evaluate_blimp(None, None, tmp_path, tmp_path, strict=True)


def test_a_truncated_export_is_one_clear_line(tmp_path: Path) -> None:
    from flava_jax.eval.torch_pll import BadExport, load_export
    from tests.hf_reference import hf_model

    hf_model(FlavaConfig.from_preset("tiny")).save_pretrained(tmp_path)
    WordPieceTokenizer.load(BUNDLED["bert-base-uncased"]).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(BadExport, match="not complete safetensors.*export the run again") as err:
        load_export(tmp_path)
    assert "\n" not in str(err.value)
