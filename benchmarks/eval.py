"""BLiMP pairs/s of the evaluator's PLL (flava_jax.eval.torch_pll.TorchPLL) beside a plain implementation of the
reference's algorithm (docs/reference.md#blimp), same model, same sentences, same scores, as a ratio.

The reference's way: chunks of 32 sentences; each chunk expanded to all its masked copies (one per inner token) as
ONE batch padded to the chunk's longest sentence; `FlavaForPreTraining(input_ids_masked=..., attention_mask=...)`,
whose MLM head then runs over every position (full logits); log-softmax over the vocabulary; gather the original
token at each masked position. Ours (flava_jax.eval.torch_pll): the copies of all sentences sorted by length into
token-budget batches, the first layer's projections shared by a sentence's copies, the last encoder layer and the
MLM head at the masked positions only. Both give each sentence's log2 PLL; the script
stops unless they agree to 1e-4.

Real BLiMP pairs: the first --pairs of every --every-th paradigm in --blimp, by default 16 of every 4th (272),
so that the reference's chunks mix sentence lengths (and pad) as on all of BLiMP, tokenised with a SentencePiece
tokenizer trained on BLiMP's good sentences (the tiny model's 512-token vocabulary caps it there), on randomly
initialised models:
tiny (the tests' size) and half (the thesis size: 516 wide, 6 text layers, the 30522-token MLM head); full (the
paper's) on request. Times are medians over --repeats interleaved runs after a warm-up run that also checks the
scores. One torch thread by default: on a shared machine, torch's thread pool slows down erratically (up to 10x)
when other processes hold the cores.

    python benchmarks/eval.py [--sizes tiny,half] [--pairs 16] [--every 4] [--repeats 3] [--threads 1]

`--full_blimp` instead runs `python -m flava_jax.evaluate`'s BLiMP task on every pair of all 67 paradigms (the
tiny model, weights spread out, saved with a tokenizer trained on BLiMP) and checks what the test suite checks on
3 pairs a paradigm: every line scored, 12 phenomena, a headline that is their mean; it prints the evaluator's
pairs/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flava_jax import FlavaConfig  # noqa: E402
from flava_jax.common.blimp import read_blimp  # noqa: E402
from flava_jax.common.pll import LN2  # noqa: E402
from flava_jax.data.tokenizer import MASK_ID, PAD_ID, Tokenizer  # noqa: E402
from flava_jax.eval.torch_pll import TorchPLL  # noqa: E402
from flava_jax.train import metrics  # noqa: E402

BLIMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "blimp"
CHUNK = 32  # sentences per batch in the reference (its validation micro-batch)
TOLERANCE = 1e-4  # log2 PLL per sentence


def reference_pll(model: Any, sentences: Sequence[Sequence[int]], chunk: int = CHUNK) -> np.ndarray:
    """Each sentence's log2 PLL as the reference computes it: per chunk of sentences one padded batch of all their
    masked copies through HF's whole forward, full MLM logits, log-softmax, gather."""
    import torch

    scores = []
    with torch.no_grad():
        for start in range(0, len(sentences), chunk):
            group = sentences[start:start + chunk]
            longest = max(len(ids) for ids in group)
            rows, positions, owners = [], [], []
            for k, ids in enumerate(group):
                for i in range(1, len(ids) - 1):
                    rows.append(list(ids) + [PAD_ID] * (longest - len(ids)))
                    positions.append(i)
                    owners.append(k)
            original = torch.tensor(rows)
            positions_t = torch.tensor(positions)
            masked = original.clone()
            masked[torch.arange(len(rows)), positions_t] = MASK_ID
            logits = model(input_ids_masked=masked, attention_mask=(original != PAD_ID).long()).mlm_logits
            logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(rows)), positions_t,
                                                     original[torch.arange(len(rows)), positions_t]]
            total = np.zeros(len(group))
            np.add.at(total, owners, logp.double().numpy())
            scores.append(total / LN2)
    return np.concatenate(scores)


def our_pll(model: Any, sentences: Sequence[Sequence[int]]) -> np.ndarray:
    """Each sentence's log2 PLL from the evaluator's scorer."""
    return np.array([lp.sum() / LN2 for lp in TorchPLL(model, MASK_ID, PAD_ID).token_logprobs(sentences)])


def blimp_sentences(directory: Path, per_paradigm: int, every: int,
                    vocab: int) -> tuple[list[list[int]], int, int]:
    """(ids of the good and bad sentence of the first `per_paradigm` pairs of every `every`-th paradigm, pairs,
    tokenizer vocabulary size); the tokenizer is trained on every good sentence."""
    everything, _ = read_blimp(directory)
    tokenizer = Tokenizer.train((p.good for p in everything), vocab)
    kept = sorted({p.paradigm for p in everything})[::every]
    pairs = [p for p in everything if p.index < per_paradigm and p.paradigm in kept]
    return [tokenizer.encode(t, 512) for p in pairs for t in (p.good, p.bad)], len(pairs), tokenizer.vocab_size


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each side's run, taken in turns so that machine noise hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
    return times


def reference_padding(sentences: Sequence[Sequence[int]], chunk: int = CHUNK) -> float:
    """Tokens the reference's padded batches hold over the tokens of all masked copies."""
    real = sum((len(ids) - 2) * len(ids) for ids in sentences)
    padded = sum(sum(len(ids) - 2 for ids in sentences[start:start + chunk]) *
                 max(len(ids) for ids in sentences[start:start + chunk]) for start in range(0, len(sentences), chunk))
    return padded / real


def matmul_flops(config: FlavaConfig, sentences: Sequence[Sequence[int]], chunk: int = CHUNK) -> dict[str, float]:
    """Matmul FLOPs of each side on `sentences`: the reference's padded chunks through every layer and the MLM head
    at every position; ours without padding (a lower bound), the first layer's query/key/value projections once per
    sentence, the last layer's queries, feed-forward and the head at the masked position only."""
    text = config.text_config
    d, f, vocab, layers = text.hidden_size, text.intermediate_size, text.vocab_size, text.num_hidden_layers
    head = 2 * (d * d + d * vocab)  # per scored position
    reference = 0.0
    for start in range(0, len(sentences), chunk):
        group = sentences[start:start + chunk]
        rows, length = sum(len(ids) - 2 for ids in group), max(len(ids) for ids in group)
        reference += metrics.encoder_flops(text, rows, length) + rows * length * head
    ours = 0.0
    for ids in sentences:
        rows, length = len(ids) - 2, len(ids)
        last = 2 * length * 2 * d * d + 2 * (2 * d * d + 2 * d * f) + 4 * length * d  # keys/values of all tokens
        first_qkv = 2 * 3 * d * d * length  # per sentence, not per copy (and once per batch for [MASK], not counted)
        ours += (metrics.encoder_flops(text, rows, length) * (layers - 1) / layers - rows * first_qkv + first_qkv
                 + rows * (last + head))
    return {"reference": reference, "ours": ours}


def bench_size(size: str, per_paradigm: int, every: int, repeats: int, blimp: Path) -> dict[str, Any]:
    """One size's row: scores checked, then pairs/s of both sides."""
    import torch
    import transformers

    config = FlavaConfig.from_preset(size)
    vocab = min(config.text_config.vocab_size, 8000)  # BLiMP's vocabulary caps the trained one lower
    sentences, pairs, vocab = blimp_sentences(blimp, per_paradigm, every, vocab)
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(transformers.FlavaConfig(**config.to_hf_dict())).eval()
    print(f"{size}: {pairs} pairs, {len(sentences)} sentences of {np.mean([len(s) for s in sentences]):.1f} "
          f"tokens on average (vocabulary {vocab}), the reference's batches padded to "
          f"{reference_padding(sentences):.2f}x their tokens; warm-up run and score check ...", flush=True)
    reference, ours = reference_pll(model, sentences), our_pll(model, sentences)
    difference = float(np.abs(reference - ours).max())
    if not difference <= TOLERANCE:
        raise SystemExit(f"{size}: per-sentence log2 PLLs differ by up to {difference:.2e} (> {TOLERANCE})")
    times = interleaved({"reference": lambda: reference_pll(model, sentences),
                         "ours": lambda: our_pll(model, sentences)}, repeats)
    row = {"size": size, "pairs": pairs, "sentences": len(sentences),
           "masked_copies": sum(len(s) - 2 for s in sentences), "tokenizer_vocab": vocab,
           "reference_padding": reference_padding(sentences), "matmul_flops": matmul_flops(config, sentences),
           "max_abs_difference_log2": difference, "seconds": times,
           "ours_pairs_per_s": pairs / statistics.median(times["ours"]),
           "reference_pairs_per_s": pairs / statistics.median(times["reference"])}
    row["ratio"] = row["ours_pairs_per_s"] / row["reference_pairs_per_s"]
    row["flop_ratio"] = row["matmul_flops"]["reference"] / row["matmul_flops"]["ours"]
    print(f"{size}: ours {row['ours_pairs_per_s']:.2f} pairs/s, reference {row['reference_pairs_per_s']:.2f} "
          f"pairs/s, {row['ratio']:.2f}x (the reference does {row['flop_ratio']:.2f}x our matmul FLOPs)", flush=True)
    return row


def full_blimp(blimp: Path, out: Path) -> dict[str, Any]:
    """Every BLiMP pair through the evaluator on the tiny model, checked; its pairs/s."""
    import jax

    from flava_jax import FlavaForPreTraining, save_pretrained
    from flava_jax.common.blimp import PHENOMENA
    from flava_jax.eval.cli import evaluate

    config = FlavaConfig.from_preset("tiny")
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                          FlavaForPreTraining(config).init_params(jax.random.key(0)))
    everything, _ = read_blimp(blimp)
    tokenizer = Tokenizer.train((p.good for p in everything), config.text_config.vocab_size)
    save_pretrained(config, params, out / "export", tokenizer=tokenizer)
    lines = sum(1 for f in blimp.glob("*.jsonl") for _ in f.open())
    print(f"tiny model, all of BLiMP: {lines} pairs ...", flush=True)
    start = time.perf_counter()
    results = evaluate(out / "export", ["blimp"], blimp, out / "eval")["blimp"]
    seconds = time.perf_counter() - start
    checks = {"every line scored": results["pairs"] == lines, "67 paradigms": len(results["paradigms"]) == 67,
              "12 phenomena": set(results["phenomena"]) == set(PHENOMENA),
              "headline = mean of phenomena": abs(results["accuracy"] - np.mean(list(results["phenomena"].values())))
              < 1e-9}
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"full BLiMP: {', '.join(failed)} failed")
    row = {"pairs": results["pairs"], "seconds": seconds, "pairs_per_s": results["pairs"] / seconds,
           "accuracy": results["accuracy"], "checks": list(checks)}
    print(f"full BLiMP on the tiny model: {row['pairs']} pairs in {seconds:.0f} s ({row['pairs_per_s']:.1f} "
          f"pairs/s), accuracy {row['accuracy']:.4f}; checks passed: {', '.join(checks)}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,half")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per paradigm")
    parser.add_argument("--every", type=int, default=4, help="take every N-th paradigm (alphabetical)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--blimp", default=str(BLIMP), help="BLiMP's 67 <paradigm>.jsonl")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "eval.json"))
    parser.add_argument("--full_blimp", action="store_true", help="score every BLiMP pair with the evaluator and "
                                                                  "check the results, instead of the comparison")
    args = parser.parse_args()

    import torch

    if not any(Path(args.blimp).glob("*.jsonl")):
        raise SystemExit(f"skipped: no BLiMP *.jsonl in {args.blimp} (the shared data folder; pass --blimp)")
    torch.set_num_threads(args.threads)
    if args.full_blimp:
        with tempfile.TemporaryDirectory() as work:
            row = full_blimp(Path(args.blimp), Path(work))
        out = Path(args.out).with_name("eval_full_blimp.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, **row}, indent=1) + "\n")
        print(f"wrote {out}")
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s); reference chunks of {CHUNK} sentences", flush=True)
    rows = [bench_size(size, args.pairs, args.every, args.repeats, Path(args.blimp)) for size in args.sizes.split(",")]
    print(f"\n{'size':5} {'pairs':>5} {'ours pairs/s':>13} {'reference pairs/s':>18} {'ratio':>6} {'FLOP ratio':>10} "
          f"{'max |diff|':>10}")
    for r in rows:
        print(f"{r['size']:5} {r['pairs']:5d} {r['ours_pairs_per_s']:13.2f} {r['reference_pairs_per_s']:18.2f} "
              f"{r['ratio']:5.2f}x {r['flop_ratio']:9.2f}x {r['max_abs_difference_log2']:10.1e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "chunk": CHUNK,
                               "pairs_per_paradigm": args.pairs, "every": args.every, "repeats": args.repeats,
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
