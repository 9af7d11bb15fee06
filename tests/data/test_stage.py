"""Staging prepared data from gs:// to local disk. Cloud Storage is simulated with etils' own epath mock, which
sends gs://BUCKET/... to a local folder through the same epath calls the real GCS backend serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from etils.epath import testing as epath_testing

from flava_jax.data import pipeline, prepare, stage
from tests.configs import debug_config


@pytest.fixture
def bucket(debug_data: Path, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """gs://bucket/... backed by tmp_path/bucket, holding the prepared sample at gs://bucket/data; yields the
    folder and the list of source files opened (to see what a stage copies)."""
    root = tmp_path / "bucket"
    shutil.copytree(debug_data, root / "data")
    opened: list[str] = []

    def local(path: object) -> str:
        return str(path).replace("gs://bucket", str(root))

    def open_(original, path, mode, *args, **kwargs):
        if str(path).startswith("gs://") and "r" in mode:
            opened.append(str(path).removeprefix("gs://bucket/data/"))
        return original(local(path), mode, *args, **kwargs)

    def redirect(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    with epath_testing.mock_epath(open=open_, exists=redirect, stat=redirect, isdir=redirect, glob=redirect,
                                  listdir=redirect):
        yield root, opened


def _shards(manifest: dict) -> list[str]:
    return [entry["file"] for entry in stage.manifest_files(manifest)]


def test_a_url_is_staged_byte_for_byte_and_a_local_path_is_not(bucket, tmp_path: Path) -> None:
    root, opened = bucket
    dest = stage.stage("gs://bucket/data", tmp_path / "local")
    manifest = json.loads((root / "data" / prepare.MANIFEST).read_text())
    files = _shards(manifest)
    assert manifest["tokenizer"]["file"] in files
    assert len(files) == 1 + sum(len(v) for v in manifest["shards"].values())
    for name in files:
        assert (dest / name).read_bytes() == (root / "data" / name).read_bytes()
    assert json.loads((dest / prepare.MANIFEST).read_text()) == manifest
    assert len(pipeline.source(dest, "text")) == manifest["kept"]["text"]
    assert sorted(set(opened) - {prepare.MANIFEST}) == sorted(files)
    # Staged already: only the manifest is read again.
    opened.clear()
    stage.stage("gs://bucket/data", dest)
    assert opened == [prepare.MANIFEST]
    assert stage.stage(root / "data", tmp_path / "unused") == root / "data"
    assert not (tmp_path / "unused").exists()


def test_an_interrupted_stage_resumes_with_the_files_it_lacks(bucket, tmp_path: Path, monkeypatch) -> None:
    root, opened = bucket
    copy, calls = stage._copy, []

    def failing_copy(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError("connection reset")
        return copy(*args, **kwargs)

    monkeypatch.setattr(stage, "_copy", failing_copy)
    with pytest.raises(OSError, match="connection reset"):
        stage.stage("gs://bucket/data", tmp_path / "local")
    assert not (tmp_path / "local" / prepare.MANIFEST).exists()  # incomplete, so not usable
    monkeypatch.setattr(stage, "_copy", copy)
    opened.clear()
    dest = stage.stage("gs://bucket/data", tmp_path / "local")
    files = _shards(json.loads((root / "data" / prepare.MANIFEST).read_text()))
    assert sorted(set(opened) - {prepare.MANIFEST}) == sorted(files[2:])
    for name in files:
        assert (dest / name).read_bytes() == (root / "data" / name).read_bytes()


def test_a_damaged_source_file_is_never_published(bucket, tmp_path: Path) -> None:
    root, _ = bucket
    manifest = json.loads((root / "data" / prepare.MANIFEST).read_text())
    victim = manifest["shards"]["text"][0]["file"]
    data = bytearray((root / "data" / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "data" / victim).write_bytes(bytes(data))
    with pytest.raises(stage.StageError, match=f"{victim}: sha256 .* is not the manifest's"):
        stage.stage("gs://bucket/data", tmp_path / "local")
    assert not (tmp_path / "local" / victim).exists()
    assert not list((tmp_path / "local").rglob("*.partial"))


@pytest.mark.parametrize("which", ["tokenizer", "last shard"])
@pytest.mark.parametrize("escape", ["absolute", "parent"])
def test_an_entry_outside_the_data_is_refused_before_any_copy(bucket, tmp_path: Path, which: str,
                                                              escape: str) -> None:
    """A manifest entry that is absolute or climbs with `..` would be written outside the destination on every
    host: staging stops on one line naming it, having read only the manifest and written nothing."""
    root, opened = bucket
    manifest_path = root / "data" / prepare.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entry = stage.manifest_files(manifest)[0 if which == "tokenizer" else -1]
    if escape == "parent":  # gs://bucket/escaped.bin holds the file, so a stage that followed the entry would succeed
        shutil.copy(root / "data" / entry["file"], root / "escaped.bin")
        entry["file"], target = "../escaped.bin", tmp_path / "escaped.bin"
    else:
        target = tmp_path / "elsewhere" / "escaped.bin"
        entry["file"] = str(target)
    manifest_path.write_text(json.dumps(manifest))
    opened.clear()
    with pytest.raises(stage.StageError, match=re.escape(repr(entry["file"])) + ".*not a relative path") as error:
        stage.stage("gs://bucket/data", tmp_path / "local")
    assert "\n" not in str(error.value)
    assert opened == [prepare.MANIFEST]
    assert not (tmp_path / "local").exists() and not target.exists()


def test_a_source_prepared_again_restages_only_what_changed(bucket, tmp_path: Path) -> None:
    root, opened = bucket
    dest = stage.stage("gs://bucket/data", tmp_path / "local")
    manifest_path = root / "data" / prepare.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    changed = manifest["shards"]["pair"][0]
    (root / "data" / changed["file"]).write_bytes(b"new pairs")
    changed["sha256"] = prepare.file_sha256(root / "data" / changed["file"])
    manifest_path.write_text(json.dumps(manifest))
    opened.clear()
    stage.stage("gs://bucket/data", dest)
    assert sorted(opened) == sorted([prepare.MANIFEST, changed["file"]])
    assert (dest / changed["file"]).read_bytes() == b"new pairs"
    assert json.loads((dest / prepare.MANIFEST).read_text()) == manifest


def test_missing_or_unfinished_data_fail_with_what_to_do(bucket, tmp_path: Path) -> None:
    root, _ = bucket
    with pytest.raises(stage.StageError, match="holds no manifest.json: point at a directory written by"):
        stage.stage("gs://bucket/elsewhere", tmp_path / "local")
    manifest_path = root / "data" / prepare.MANIFEST
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "complete": False}))
    with pytest.raises(stage.StageError, match="did not finish"):
        stage.stage("gs://bucket/data", tmp_path / "local")


def test_the_trainer_stages_a_gs_data_dir(bucket, tmp_path: Path) -> None:
    from flava_jax.train.trainer import prepared_data

    root, _ = bucket
    config = debug_config()
    config.data.dir = "gs://bucket/data"
    config.data.stage_dir = str(tmp_path / "staged")
    assert prepared_data(config, tmp_path / "workdir") == tmp_path / "staged"
    assert (tmp_path / "staged" / prepare.MANIFEST).read_bytes() == (root / "data" / prepare.MANIFEST).read_bytes()


def test_default_destinations_differ_per_source() -> None:
    a, b = stage.default_destination("gs://b/data/10M"), stage.default_destination("gs://b/data_10M")
    assert a != b and a.name.startswith("b_data_10M-") and stage.is_url("gs://b/x") and not stage.is_url("/gs/b")


def test_the_command_line_refuses_a_local_source(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "flava_jax.data.stage", f"--src={tmp_path}"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "--src must be a URL such as gs://BUCKET/PATH" in result.stderr
