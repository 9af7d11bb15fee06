"""Checkpoints: sha256.json written once a save is complete, verified on restore; a corrupt step moved to corrupt/
with a fallback to the newest good one; a failed background write raised once, naming the step directory."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from flava_jax.train import checkpoint as checkpoint_lib


def state(step: int) -> dict[str, np.ndarray]:
    return {"w": np.arange(4096, dtype=np.float32) * step, "b": np.full((3,), step, np.int32)}


def save_steps(directory: Path, steps: list[int]) -> None:
    checkpoints = checkpoint_lib.Checkpoints(directory, keep_last=10, best_metric=None)
    for step in steps:
        checkpoints.save(step, state(step), {"position": step}, {"stopped": False})
    checkpoints.close()


def largest_data_file(step_dir: Path) -> Path:
    """The biggest file of the checkpoint's array data (OCDBT's d/ folders), where the weights are."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def test_checksums_cover_every_file_of_a_complete_checkpoint(tmp_path: Path) -> None:
    save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        step_dir = tmp_path / str(step)
        files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != "sha256.json")
        expected = {p.relative_to(step_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        assert json.loads((step_dir / "sha256.json").read_text()) == expected
        assert any(name.startswith("state/") for name in expected)


def test_flipped_bytes_are_found_moved_aside_and_the_previous_step_restored(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    save_steps(tmp_path, [1, 2])
    flip_bytes(largest_data_file(tmp_path / "2"))
    checkpoints = checkpoint_lib.Checkpoints(tmp_path, async_save=False)
    with pytest.raises(checkpoint_lib.CorruptCheckpoint, match=r"checkpoint step 2 in .* is corrupt: 1 file"):
        checkpoints.restore(step=2)
    with caplog.at_level(logging.ERROR, logger="flava_jax"):
        restored, bad = checkpoints.restore_newest_good()
    saved, _, _, step = restored
    assert (step, bad) == (1, [2])
    np.testing.assert_array_equal(np.asarray(saved["w"]), state(1)["w"])
    assert checkpoints.all_steps() == [1] and (tmp_path / "corrupt" / "2" / "sha256.json").is_file()
    # Ours only: a stray record of another library (a garbage-collected client's cleanup) may land here too.
    (record,) = [r for r in caplog.records if r.name.startswith("flava_jax")]
    assert "moved to" in record.getMessage()
    checkpoints.close()


def test_a_truncated_file_and_a_second_corrupt_copy_of_a_step(tmp_path: Path) -> None:
    save_steps(tmp_path, [1, 2])
    (tmp_path / "corrupt" / "2").mkdir(parents=True)  # an earlier corrupt step 2, kept
    data = largest_data_file(tmp_path / "2")
    data.write_bytes(data.read_bytes()[:100])
    checkpoints = checkpoint_lib.Checkpoints(tmp_path, async_save=False)
    restored, bad = checkpoints.restore_newest_good()
    checkpoints.close()
    assert (restored[3], bad) == (1, [2])
    assert (tmp_path / "corrupt" / "2.1" / "sha256.json").is_file() and (tmp_path / "corrupt" / "2").is_dir()


def test_a_checkpoint_without_checksums_restores_with_a_warning(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    save_steps(tmp_path, [1])
    (tmp_path / "1" / "sha256.json").unlink()  # as an older version, or a kill before the checksums, leaves it
    checkpoints = checkpoint_lib.Checkpoints(tmp_path, async_save=False)
    with caplog.at_level(logging.WARNING, logger="flava_jax"):
        saved, data, _, step = checkpoints.restore()
    checkpoints.close()
    assert step == 1 and data == {"position": 1}
    np.testing.assert_array_equal(np.asarray(saved["b"]), state(1)["b"])
    assert any("no sha256.json" in r.getMessage() and "unverified" in r.getMessage() for r in caplog.records)


def test_a_workdir_whose_every_checkpoint_is_corrupt_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        flip_bytes(largest_data_file(tmp_path / str(step)))
    checkpoints = checkpoint_lib.Checkpoints(tmp_path, async_save=False)
    with pytest.raises(checkpoint_lib.CheckpointError, match=r"no checkpoint in .* is intact \(steps \[2, 1\]"):
        checkpoints.restore_newest_good()
    checkpoints.close()
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == ["1", "2"]


def test_a_failed_background_write_is_one_error_naming_the_step(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills during step 2's asynchronous save: the next wait raises one CheckpointError naming the step
    directory; step 1 stays complete and verified, step 2 never appears."""
    checkpoints = checkpoint_lib.Checkpoints(tmp_path, keep_last=10, best_metric=None)
    checkpoints.save(1, state(1), {"position": 1}, {"stopped": False})
    checkpoints.wait()
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def full_disk(self: object, x: object, directory: Path) -> None:
        if "2.orbax-checkpoint-tmp" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        await original(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_disk)
    checkpoints.save(2, state(2), {"position": 2}, {"stopped": False})
    with pytest.raises(checkpoint_lib.CheckpointError,
                       match=rf"writing checkpoint step 2 to {tmp_path}/2 failed \(OSError: .*No space left.*\); the "
                             r"last complete checkpoint, step 1, is intact"):
        checkpoints.wait()
    checkpoints.close()  # after the failure: releases Orbax's threads without raising it again
    monkeypatch.undo()
    reader = checkpoint_lib.Checkpoints(tmp_path, async_save=False)
    assert reader.all_steps() == [1] and reader.restore()[3] == 1
    reader.close()
