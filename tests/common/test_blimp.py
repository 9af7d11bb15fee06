"""read_blimp on stray and broken files: only BLiMP's 67 paradigm files count, in either layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flava_jax.common.blimp import PARADIGMS, BlimpError, read_blimp


@pytest.mark.parametrize("layout", ["blimp", "blimp_filtered_babylm2025"])
def test_the_paradigm_list_is_the_real_directorys(shared_data: Path, layout: str) -> None:
    assert len(PARADIGMS) == 67
    assert sorted(p.stem for p in (shared_data / layout).glob("*.jsonl")) == sorted(PARADIGMS)


def _write(path: Path, term: str, pairs: list[tuple[str, str]], id_key: str = "pairID") -> None:
    path.write_text("".join(json.dumps({"sentence_good": g, "sentence_bad": b, "linguistics_term": term, id_key: i})
                            + "\n" for i, (g, b) in enumerate(pairs)))


@pytest.fixture
def blimp_dir(tmp_path: Path) -> Path:
    """Two paradigms (one per layout), a stray valid BLiMP-format `notes.jsonl` and a stray binary file."""
    _write(tmp_path / "anaphor_gender_agreement.jsonl", "anaphor_agreement", [("Tom saw himself.", "Tom saw herself.")])
    _write(tmp_path / "wh_island.jsonl", "island_effects", [("What did you see?", "What did you see it?")] * 2,
           id_key="pair_id")
    _write(tmp_path / "notes.jsonl", "my_notes", [("A note.", "Notes a.")])
    (tmp_path / "scores.jsonl").write_bytes(b"\x80\x81\xfe\xff" * 64)
    return tmp_path


def test_stray_files_are_named_once_and_ignored(blimp_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        pairs, problems = read_blimp(blimp_dir)
    assert [(p.paradigm, p.phenomenon, p.index) for p in pairs] == [
        ("anaphor_gender_agreement", "anaphor_agreement", 0), ("wh_island", "island_effects", 0),
        ("wh_island", "island_effects", 1)]
    assert problems == []
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("flava_jax")]
    assert "notes.jsonl" in warning and "scores.jsonl" in warning


def test_stray_files_are_refused_when_strict(blimp_dir: Path) -> None:
    with pytest.raises(BlimpError, match=r"not BLiMP paradigms: notes\.jsonl, scores\.jsonl"):
        read_blimp(blimp_dir, strict=True)


def test_an_unreadable_paradigm_file_is_an_error_naming_it(blimp_dir: Path) -> None:
    (blimp_dir / "scores.jsonl").unlink()
    (blimp_dir / "wh_island.jsonl").write_bytes(b'{"sentence_good": "\xff"}\n')
    with pytest.raises(BlimpError, match=r"wh_island\.jsonl cannot be read as UTF-8"):
        read_blimp(blimp_dir)


def test_a_directory_without_paradigm_files_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "notes.jsonl", "my_notes", [("A note.", "Notes a.")])
    with pytest.raises(FileNotFoundError, match="holds none of BLiMP's 67"):
        read_blimp(tmp_path)
