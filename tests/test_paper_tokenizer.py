"""The paper's tokenizer end to end: prepare with BERT's vocabulary, train the debug model, export it and evaluate
the export; and a workdir trained with one tokenizer refusing data prepared with the other."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.data import records
from flava_jax.data.prepare import read_stream
from flava_jax.data.wordpiece import BUNDLED
from flava_jax.export import export
from flava_jax.train.trainer import train
from tests.configs import debug_config

# Both tests read one debug run with BERT's vocabulary, trained once on the xdist worker that runs them.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bert_run")]
transformers = pytest.importorskip("transformers", reason="export and evaluation need the eval extra")


def _bert_config(**overrides: object) -> object:
    return debug_config(**{"data__tokenizer": "bert-base-uncased", "model__text_config__vocab_size": 30522,
                           "total_steps": 4, "checkpoint_every_steps": 4, "eval__every_steps": 4, **overrides})


@pytest.fixture(scope="session")  # not module: pytest would train again after other modules' tests
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(workdir, train's result) of 4 debug steps prepared and trained with BERT's vocabulary; the tests only read
    it (a refused resume rewrites nothing there)."""
    workdir = tmp_path_factory.mktemp("bert") / "run"
    return workdir, train(_bert_config(), workdir, jax.devices()[:1])


def test_prepare_train_export_and_evaluate_with_berts_vocabulary(bert_run: tuple[Path, dict], tmp_path: Path) -> None:
    from flava_jax.eval.cli import evaluate

    run, result = bert_run
    assert result["step"] == 4
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["file"] == "vocab.txt" and manifest["tokenizer"]["source"] == "bert-base-uncased"
    out, step = export(run, tmp_path / "export")
    assert step == 4
    exported = transformers.AutoTokenizer.from_pretrained(out)
    reference = transformers.BertTokenizerFast(vocab=str(BUNDLED["bert-base-uncased"]), do_lower_case=True)
    texts = [records.decode_text(r) for stream in ("text", "pair", "heldout")
             for r in read_stream(run / "data", stream)]
    assert texts and exported(texts)["input_ids"] == reference(texts)["input_ids"]
    model = transformers.FlavaForPreTraining.from_pretrained(out)
    assert model.config.text_config.vocab_size == 30522

    blimp = tmp_path / "blimp"
    blimp.mkdir()
    (blimp / "anaphor_gender_agreement.jsonl").write_text("".join(json.dumps(row) + "\n" for row in (
        {"sentence_good": "Katherine can't help herself.", "sentence_bad": "Katherine can't help himself.",
         "UID": "anaphor_gender_agreement", "linguistics_term": "anaphor_agreement"},
        {"sentence_good": "Dogs bark loudly.", "sentence_bad": "Dogs barks loudly.",
         "UID": "anaphor_gender_agreement", "linguistics_term": "anaphor_agreement"})))
    results = evaluate(out, ["blimp", "pppl"], blimp, tmp_path / "eval", pppl_file=run / "data",
                       pll=["original", "within_word_l2r"])
    assert 0 <= results["blimp"]["accuracy"] <= 100 and results["pppl"]["pppl"] > 1
    assert "blimp_within_word_l2r" in results


def test_a_run_refuses_data_prepared_with_another_tokenizer(bert_run: tuple[Path, dict], debug_data: Path) -> None:
    run, _ = bert_run
    with pytest.raises(ConfigError, match=r"config\.data\.dir: None -> .*allow_config_change"):
        train(_bert_config(data__dir=str(debug_data), total_steps=8), run)
    # Accepting the change of data does not accept the change of tokenizer: the checkpoints' embeddings need theirs.
    with pytest.raises(ConfigError, match=r"trained with the tokenizer .*vocab\.txt.* has another .*tokenizer\.model"):
        train(_bert_config(data__dir=str(debug_data), total_steps=8, allow_config_change=True), run)
