"""prepare: budgets on a generated corpus with known word counts, nesting, determinism, held-out split, resume
(after a crash or a full disk), concurrent prepares into one folder, stored images and their formats."""

from __future__ import annotations

import collections
import csv
import errno
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from flava_jax.data import carve as carve_module
from flava_jax.data import prepare as prepare_module
from flava_jax.data import records, shard_files
from flava_jax.data.images import to_jpeg
from flava_jax.data.prepare import DiskFullError, PrepareSettings, file_sha256, prepare, read_stream
from flava_jax.data.sources.rows import WIT_COLUMNS
from flava_jax.data.tokenizer import Tokenizer
from tests.configs import REPO, debug_config, prepare_settings
from tests.data.wit_rows import threaded_pool

ROWS = 240


def _row(i: int) -> dict[str, Any]:
    """Row i of the corpus: its fields, and whether the reference would keep it."""
    return dict(
        language="de" if i % 7 == 3 else "en",
        page_url=f"https://en.wikipedia.org/wiki/Page_{i}",
        image_url=f"https://upload.wikimedia.org/x/img{i}.jpg",
        caption_reference_description=None if i % 11 == 5 else f"caption {i}" + " word" * (i % 5),
        context_page_description=f"page {i}" + " text" * (3 + i % 4),
        context_section_description=f"section {i} of the page" if i % 3 == 0 else None,
        caption_alt_text_description=f"alt {i} text" if i % 13 == 0 else None,
        caption_attribution_description=f"attribution {i}",  # never used
    )


def _texts(row: dict[str, Any]) -> list[str]:
    keys = ("caption_reference_description", "context_page_description", "context_section_description",
            "caption_alt_text_description")
    return [row[k] for k in keys if row[k] is not None]


def _already_right(i: int) -> bool:
    """Whether row i's image is 16x16 (image_size in _prepare): stored as it is, the others converted."""
    return i % 3 == 0


def _eligible() -> list[int]:
    return [i for i in range(ROWS) if _row(i)["language"] == "en" and _row(i)["caption_reference_description"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    with open(root / "rows.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(WIT_COLUMNS)
        for i in range(ROWS):
            row = _row(i)
            writer.writerow(["" if row.get(c) is None else row[c] for c in WIT_COLUMNS])
            size = (16, 16) if _already_right(i) else (12, 9)
            # a PNG by turns, under the URL's .jpg name: what counts is what the bytes are
            Image.new("RGB", size, (i % 256, (7 * i) % 256, 50)).save(images / f"img{i}.jpg",
                                                                       format="PNG" if i % 2 else "JPEG")
    return root / "rows.tsv", images


def _prepare(corpus: tuple[Path, Path], out: Path, **changes: Any) -> dict[str, Any]:
    settings = dict(text_words=-1, images=-1, vocab_size=128, heldout_fraction=0.0, image_size=16,
                    image_dirs=(str(corpus[1]),), download=False, chunk_records=37, fetch_batch=16)
    return prepare(prepare_settings(**{**settings, **changes}), [str(corpus[0])], out)


def _source_row(row_id: int, per_slice: int = 37) -> int:
    """The corpus row of a record's row id: (slice << 32) + its place in the slice, slices of `chunk_records` rows of
    the TSV (flava_jax/data/carve.py)."""
    return (row_id >> 32) * per_slice + (row_id & 0xFFFFFFFF)


def _stream(out: Path, name: str) -> list[records.Example]:
    return [records.decode(r) for r in read_stream(out, name)]


@pytest.mark.parametrize("words", [1, 60, 333, 1000])
def test_text_budget_is_met_within_one_example(corpus: tuple[Path, Path], tmp_path: Path, words: int) -> None:
    manifest = _prepare(corpus, tmp_path, text_words=words, images=0)
    texts = [e.text for e in _stream(tmp_path, "text")]
    counted = sum(len(t.split()) for t in texts)
    assert manifest["words"]["text"] == counted
    assert counted >= words and counted - len(texts[-1].split()) < words
    expected = [t for i in _eligible() for t in _texts(_row(i))]
    assert texts == expected[:len(texts)]  # the corpus's own order: a prefix
    assert not manifest["kept"]["image"] and not manifest["kept"]["pair"]


def test_budgets_nest_and_pairs_take_the_smaller(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    budgets = [(200, 30), (600, 10), (2000, 60)]
    streams = {}
    for words, images in budgets:
        out = tmp_path / f"{words}_{images}"
        manifest = _prepare(corpus, out, text_words=words, images=images)
        streams[words, images] = {s: _stream(out, s) for s in ("text", "image", "pair")}
        assert manifest["kept"]["image"] == images
        text_rows = [_source_row(e.row) for e in streams[words, images]["text"]]
        image_rows = [_source_row(e.row) for e in streams[words, images]["image"]]
        assert set(text_rows) <= set(_eligible())
        full_rows = [r for r in set(text_rows) if text_rows.count(r) == len(_texts(_row(r)))]
        pair_rows = sorted({_source_row(e.row) for e in streams[words, images]["pair"]})
        assert pair_rows == sorted(set(full_rows) & set(image_rows))  # rows inside both prefixes
        for example in streams[words, images]["pair"]:  # each pair: a text of the row, with the row's image
            assert example.text in _texts(_row(_source_row(example.row)))
            assert example.image == next(e.image for e in streams[words, images]["image"] if e.row == example.row)
    for small, large in ((budgets[0], budgets[2]), (budgets[1], budgets[2])):
        for stream in ("text", "image", "pair"):
            a, b = streams[small][stream], streams[large][stream]
            assert b[:len(a)] == a, f"{stream} of {small} is not a prefix of {large}"


def test_manifest_counts_hashes_and_skips(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    manifest = _prepare(corpus, tmp_path)
    assert manifest["skipped"] == {"language not en": sum(_row(i)["language"] == "de" for i in range(ROWS)),
                                   "no caption": sum(_row(i)["language"] == "en" and not _row(i)[
                                       "caption_reference_description"] for i in range(ROWS))}
    eligible = _eligible()
    assert manifest["train_rows"] == manifest["kept"]["image"] == len(eligible)
    assert manifest["kept"]["text"] == manifest["kept"]["pair"] == sum(len(_texts(_row(i))) for i in eligible)
    assert manifest["words"]["text"] == sum(len(t.split()) for i in eligible for t in _texts(_row(i)))
    for shards in manifest["shards"].values():
        for shard in shards:
            assert hashlib.sha256((tmp_path / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    tokenizer = Tokenizer.load(tmp_path / "tokenizer.model")
    assert manifest["tokenizer"]["vocab_size"] == tokenizer.vocab_size <= 128
    assert not any("attribution" in e.text for e in _stream(tmp_path, "text"))
    # The stored images are the corpus's: those already 16x16 as they are, the others squashed to 16x16 JPEGs.
    files = {i: (corpus[1] / f"img{i}.jpg").read_bytes() for i in eligible}
    stored = {i: files[i] if _already_right(i) else to_jpeg(files[i], 16) for i in eligible}
    assert [e.image for e in _stream(tmp_path, "image")] == list(stored.values())
    png = [i for i in eligible if _already_right(i) and i % 2]
    assert png and manifest["image_formats"] == {
        "png": {"count": len(png), "bytes": sum(len(files[i]) for i in png)},
        "jpeg": {"count": len(eligible) - len(png), "bytes": sum(len(stored[i]) for i in eligible if i not in png)}}


def test_same_seed_same_shards_and_a_seeded_heldout(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    a = _prepare(corpus, tmp_path / "a", heldout_fraction=0.3, seed=1)
    b = _prepare(corpus, tmp_path / "b", heldout_fraction=0.3, seed=1)
    c = _prepare(corpus, tmp_path / "c", heldout_fraction=0.3, seed=2)
    assert a["shards"] == b["shards"] and a["tokenizer"] == b["tokenizer"]
    assert a["shards"] != c["shards"]
    heldout = {e.text for e in _stream(tmp_path / "a", "heldout")}
    train = {e.text for e in _stream(tmp_path / "a", "text")}
    assert heldout and not heldout & train
    rows = len(_eligible())
    share = 1 - a["train_rows"] / rows
    assert abs(share - 0.3) < 3 * np.sqrt(0.3 * 0.7 / rows)


class _Crash(RuntimeError):
    pass


def test_an_interrupted_prepare_resumes_to_the_same_result(corpus: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _prepare(corpus, tmp_path / "whole", text_words=900, images=50)
    calls = {"n": 0}
    original = carve_module._Carver.process

    def crashing(self: Any, window: Any, first: int, writers: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 8:  # two chunks (3 windows each) committed, the third half written
            raise _Crash
        return original(self, window, first, writers)

    monkeypatch.setattr(carve_module._Carver, "process", crashing)
    with pytest.raises(_Crash):
        _prepare(corpus, tmp_path / "resumed", text_words=900, images=50)
    progress = json.loads((tmp_path / "resumed" / "progress.json").read_text())
    assert 0 < progress["source_records"] < reference["source_records"]
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "resumed").rglob("*"))  # the failed slice cleaned up
    monkeypatch.setattr(carve_module._Carver, "process", original)
    resumed = _prepare(corpus, tmp_path / "resumed", text_words=900, images=50)
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "resumed").rglob("*"))
    for key in ("kept", "words", "skipped", "train_rows", "source_records", "tokenizer", "shards", "image_formats"):
        assert resumed[key] == reference[key], key
    for stream in ("text", "image", "pair"):
        assert [e for e in _stream(tmp_path / "resumed", stream)] == [e for e in _stream(tmp_path / "whole", stream)]
    for other in (dict(text_words=901), dict(image_reencode=True)):
        with pytest.raises(SystemExit, match="other settings"):
            _prepare(corpus, tmp_path / "resumed", **{"text_words": 900, "images": 50, **other})


ENOSPC = os.strerror(errno.ENOSPC)
COMMITTED_INTACT = "The chunks committed before it are intact"


class _FillingWriter:
    """ArrayRecord's writer on a disk that is full by the time the shard at `failing` is closed (where ArrayRecord
    writes most of a shard, and fails as it does)."""

    def __init__(self, failing: Path, path: str, options: str) -> None:
        self.failing, self.path, self.writer = failing, path, ArrayRecordWriter(path, options)

    def write(self, record: bytes) -> None:
        self.writer.write(record)

    def close(self) -> None:
        if self.path == str(self.failing):
            raise RuntimeError(f"write() failed: {ENOSPC}; writing {self.path}; at byte 45056; Failed to close "
                               "chunk_writer")
        self.writer.close()


@pytest.mark.parametrize(("where", "chunk"), [("pair", 0), ("pair", 3), ("progress", 0), ("progress", 3)])
def test_a_full_disk_ends_in_one_error_and_a_rerun_completes(corpus: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, where: str,
                                                            chunk: int) -> None:
    """The disk fills up while chunk `chunk` is committed: at its pair shard (the last of its streams, as ArrayRecord
    fails) or at progress.json (as Python's write fails: OSError, no file name). prepare raises a DiskFullError naming
    the file; the rerun continues after the committed chunks or, with none, starts over (the failed chunk's leftovers
    never make it refuse the folder), and ends as an uninterrupted run."""
    lone = _prepare(corpus, tmp_path / "lone")
    out = tmp_path / "full"
    if where == "pair":
        failing = out / "pair" / f"{chunk:05d}.arrayrecord.{os.getpid()}.tmp"  # one process: workers=1
        monkeypatch.setattr(shard_files, "ArrayRecordWriter", functools.partial(_FillingWriter, failing))
    else:
        failing, write_text = out / "progress.json", Path.write_text

        def filling_write_text(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
            if path == failing.with_suffix(".json.tmp") and json.loads(text)["chunk"] == chunk + 1:
                raise OSError(errno.ENOSPC, ENOSPC)
            return write_text(path, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", filling_write_text)
    with pytest.raises(DiskFullError) as error:
        _prepare(corpus, out)
    assert str(error.value).startswith(f"writing {failing} failed: {ENOSPC}. {COMMITTED_INTACT}")
    assert json.loads((out / "progress.json").read_text())["chunk"] == chunk  # the chunks before it committed
    if where == "progress":
        assert list(out.glob(f"*/{chunk:05d}.arrayrecord"))  # yet the failed chunk left its published shards
    monkeypatch.undo()
    resumed = _prepare(corpus, out)
    assert resumed["shards"] == lone["shards"] and resumed["tokenizer"] == lone["tokenizer"]
    assert not list(out.rglob("*.tmp"))


def test_a_full_tmpfs_ends_the_command_line_in_one_line(tmp_path: Path) -> None:
    """`python -m flava_jax.data.prepare` on a real tmpfs with room for one chunk: one line naming the shard, no
    traceback; once the tmpfs is larger, the rerun continues after that chunk and ends as an uninterrupted run."""
    config = debug_config(data__chunk_records=8, data__prepare_workers=1)
    lone = prepare(PrepareSettings.from_config(config), list(config.data.sources), tmp_path / "lone")
    first_chunk = sum(p.stat().st_size for p in (tmp_path / "lone").glob("*/00000.arrayrecord"))
    disk = tmp_path / "tmpfs"
    disk.mkdir()
    # room for chunk 0 and its progress.json, not for a shard of chunk 1 (ArrayRecord pads each to 128 KiB)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={first_chunk + (64 << 10)}", "tmpfs", str(disk)]
    try:
        mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        mounted = subprocess.CompletedProcess(mount, 1, "", str(e))
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({' '.join(mounted.stderr.split())}); the injected full disks stand in")
    try:
        command = [sys.executable, "-m", "flava_jax.data.prepare", "--config=configs/debug.py", f"--out={disk}/out",
                   "--config.data.chunk_records=8", "--workers=1"]
        full = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        assert re.fullmatch(rf"prepare: writing {re.escape(str(disk))}/out/\w+/00001\.arrayrecord\.\d+\.tmp failed: "
                            rf"{ENOSPC}\. {COMMITTED_INTACT}: .*", full.stderr.splitlines()[-1])
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        # chunk 0: photos.tsv, the first file (4 records; a slice never spans two files)
        assert again.returncode == 0 and "resuming after 4 source records (chunk 1)" in again.stderr, again.stderr
        assert json.loads((disk / "out" / "manifest.json").read_text())["shards"] == lone["shards"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# Two prepares into one folder, started together once both have imported everything.
_TAKE_TURNS = """
import json, logging, os, sys, time
from pathlib import Path
from tests.data.test_prepare import _prepare
logging.basicConfig(level=logging.INFO, force=True)  # absl took the root logger
rows, images, out, ready = map(Path, sys.argv[1:])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.005)
print(json.dumps(_prepare((rows, images), out)["shards"]))
"""


def test_two_prepares_into_one_folder_take_turns(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """Two prepares into one folder (two terminals, a pod script on every worker): the second waits for the first,
    saying so, then finds its output complete; neither fails, and the shards are a lone run's."""
    lone = _prepare(corpus, tmp_path / "lone")
    out, ready = tmp_path / "shared", tmp_path / "ready"
    ready.mkdir()
    runs = [subprocess.Popen([sys.executable, "-c", _TAKE_TURNS, *map(str, corpus), str(out), str(ready)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
        assert json.loads(stdout) == lone["shards"]
    waited = [stderr for _, stderr in outputs if f"waiting for another prepare into {out} to finish" in stderr]
    assert len(waited) == 1 and "already complete" in waited[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == lone["shards"]
    assert all(file_sha256(out / s["file"]) == s["sha256"] for shards in manifest["shards"].values() for s in shards)


def test_command_line_on_the_debug_config(tmp_path: Path) -> None:
    """`python -m flava_jax.data.prepare --config=configs/debug.py --out=DIR`, with config overrides and the
    image work in two worker processes."""
    command = [sys.executable, "-m", "flava_jax.data.prepare", "--config=configs/debug.py", f"--out={tmp_path}",
               "--config.data.heldout_fraction=0.5", "--config.data.image_reencode=True", "--workers=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["settings"]["heldout_fraction"] == 0.5 and manifest["settings"]["prepare_workers"] == 2
    assert manifest["settings"]["image_reencode"] is True and list(manifest["image_formats"]) == ["jpeg"]
    assert manifest["kept"]["pair"] > 0 and manifest["kept"]["heldout"] > 0 and manifest["complete"]
    assert json.loads(result.stdout)["kept"] == manifest["kept"]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_image_reencode_is_checked_as_a_switch() -> None:
    """ConfigDict lets None into a bool key; the start-up check names it."""
    from flava_jax.common.settings import ConfigError
    from flava_jax.train.config_check import check_config

    for value in (False, True):
        check_config(debug_config(data__image_reencode=value))
    with pytest.raises(ConfigError, match=r"^config\.data\.image_reencode=None must be True or False"):
        check_config(debug_config(data__image_reencode=None))


def test_invalid_bytes_cost_their_rows_only_and_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Five rows with a Latin-1 byte in their page title: the other rows are all kept, the first three skips are
    logged with their file:line, and the tokenizer is written."""
    bad = (10, 20, 30, 40, 50)
    lines = [b"\t".join(c.encode() for c in WIT_COLUMNS)]
    for i in range(ROWS):
        row = {**_row(i), "page_title": "Caf\xe9" if i in bad else "Cafe"}
        lines.append(b"\t".join(b"" if row.get(c) is None else row[c].encode("latin-1") for c in WIT_COLUMNS))
    (tmp_path / "rows.tsv").write_bytes(b"\n".join(lines) + b"\n")
    settings = prepare_settings(text_words=-1, images=0, require_image=False, vocab_size=128, heldout_fraction=0.0,
                                download=False, chunk_records=37)
    with caplog.at_level("WARNING"):
        manifest = prepare(settings, [str(tmp_path / "rows.tsv")], tmp_path / "out")
    assert manifest["skipped"]["invalid UTF-8"] == len(bad)
    kept = [i for i in _eligible() if i not in bad]
    assert [e.text for e in _stream(tmp_path / "out", "text")] == [t for i in kept for t in _texts(_row(i))]
    logged = [r.getMessage() for r in caplog.records if "invalid UTF-8" in r.getMessage()]
    assert [m.split(": ")[0] for m in logged] == [f"{tmp_path / 'rows.tsv'}:{i + 2}" for i in bad[:3]]
    assert manifest["tokenizer"] and (tmp_path / "out" / manifest["tokenizer"]["file"]).is_file()


@pytest.mark.parametrize("workers", [2, 3])
def test_speculative_slices_give_the_exact_carve(corpus: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Slices carved ahead of the budgets, then kept, trimmed of the streams that filled meanwhile, or carved again,
    give what one process carving in order gives, for budgets met inside slices, between them and never, held-out caps
    reached, and rows whose image is missing (dropped while images are needed, kept for text once they are not)."""
    images = tmp_path / "images"
    images.mkdir()
    for path in corpus[1].iterdir():
        if int(path.stem.removeprefix("img")) % 13 != 4:  # some images missing
            (images / path.name).write_bytes(path.read_bytes())
    verdicts = collections.Counter()
    original = prepare_module.verdict

    def counted(*args: Any) -> Any:
        dropped = original(*args)
        verdicts["again" if dropped is None else "dropped" if dropped else "kept"] += 1
        return dropped

    grid = [dict(text_words=60, images=50), dict(text_words=900, images=10), dict(text_words=-1, images=30),
            dict(text_words=300, images=-1, heldout_max_texts=7, heldout_max_images=4),
            dict(text_words=2000, images=0), dict(text_words=200, images=20, require_image=False),
            dict(text_words=2000, images=20, require_image=False)]
    for i, budgets in enumerate(grid):
        changes = dict(heldout_fraction=0.3, image_dirs=(str(images),), **budgets)
        lone = _prepare(corpus, tmp_path / f"lone{i}", **changes)
        with monkeypatch.context() as patched:
            patched.setattr(prepare_module.concurrent.futures, "ProcessPoolExecutor", threaded_pool)
            patched.setattr(prepare_module, "verdict", counted)
            ahead = _prepare(corpus, tmp_path / f"ahead{i}", prepare_workers=workers, **changes)
        for key in ("kept", "words", "skipped", "shards", "image_formats", "train_rows", "source_records",
                    "budget_met", "tokenizer"):
            assert ahead[key] == lone[key], (budgets, key)
    assert verdicts["again"] and verdicts["dropped"] and verdicts["kept"], verdicts


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux's /proc")
def test_a_killed_prepare_resumes_to_a_lone_runs_shards(tmp_path: Path) -> None:
    """`prepare --workers=2` killed with SIGKILL after some slices committed (only the command: its workers must end
    on their own), then run again at once: the same shards as one process carving alone, and no worker left."""
    import io
    import signal
    import time

    from flava_jax.data.sample import SAMPLE_DIR
    from tests.data.wit_rows import write_json_with_images

    images = []
    for i, photo in enumerate(sorted((SAMPLE_DIR / "images").glob("*")) * 40):  # WiT-sized: converted, not kept
        out = io.BytesIO()
        Image.open(photo).convert("RGB").resize((1200 + i, 900)).save(out, format="JPEG", quality=90)
        images.append(out.getvalue())
    source = write_json_with_images(tmp_path / "rows.json", images)
    overrides = dict(data__chunk_records=8, data__heldout_fraction=0.2, data__prepare_workers=1)
    lone = prepare(PrepareSettings.from_config(debug_config(**overrides)), [str(source)], tmp_path / "lone")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "flava_jax.data.prepare", "--config=configs/debug.py", f"--source={source}",
               f"--out={out}", "--config.data.chunk_records=8", "--config.data.heldout_fraction=0.2", "--workers=2"]
    killed = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (json.loads((out / "progress.json").read_text())["chunk"] if (out / "progress.json").is_file() else 0) < 3:
        assert killed.poll() is None and time.monotonic() < deadline, "the prepare ended before it could be killed"
        time.sleep(0.01)
    workers = _children(killed.pid)
    assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    progress = json.loads((out / "progress.json").read_text())
    assert 3 <= progress["chunk"] and not progress.get("complete")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after" in again.stderr
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["shards"] == lone["shards"] and len(lone["shards"]["image"]) > 3
    until = time.monotonic() + 10  # a worker notices within a second
    while (left := [pid for pid in workers if Path(f"/proc/{pid}").exists()]) and time.monotonic() < until:
        time.sleep(0.1)
    assert not left, "the killed prepare's workers outlived it"
    assert all(file_sha256(out / s["file"]) == s["sha256"] for shards in resumed["shards"].values() for s in shards)
