"""Sources per stream: the text stream from one dataset, the image and pair streams from another.

`data.text_sources`, `data.image_sources` and `data.pair_sources` each default to `data.sources`. When the three
are the same, prepare carves once, as always. Otherwise each distinct source list is carved on its own, into a
subfolder of the output named for the streams it feeds (`carve-text/`, `carve-image-pair/`), under the same
budgets, as if it were the only source:

* the text stream, its held-out texts and the tokenizer come from the text stream's carve (with no image budget:
  it stores no images, though `data.require_image` still drops the rows whose image cannot be had);
* the image stream and its held-out images from the image stream's carve, the pair stream and its held-out pairs
  from the pair stream's; a pair is a row inside both budgets of its own sources, so captions (~10 words) give more
  pairs under a word budget than WiT's long texts do;
* `data.language` applies to the carves whose sources record a language; a carve of sources that record none
  (img2dataset output, COCO) reads every row, and says so in the log. When no source records one, the filter is
  the start-up error it always is.

The top manifest.json points each stream at its carve's shards (paths relative to the output, as always, so the
pipeline, staging and checksums read it unchanged) and records which sources fed which stream (`stream_sources`)
and each carve's own counts (`carves`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flava_jax.common.settings import ConfigError
from flava_jax.data import prepare as prepare_lib
from flava_jax.data.records import STREAMS
from flava_jax.data.sources.dispatch import describe_source

log = logging.getLogger("flava_jax.prepare")
# What each stream's carve contributes: the stream, and its held-out counterpart
_CONTRIBUTES = {"text": ("text", prepare_lib.HELDOUT), "image": ("image", prepare_lib.HELDOUT_IMAGE),
                "pair": ("pair", prepare_lib.HELDOUT_PAIR)}


@dataclasses.dataclass(frozen=True)
class StreamSources:
    """The source specs that feed each stream."""

    text: tuple[str, ...]
    image: tuple[str, ...]
    pair: tuple[str, ...]

    @classmethod
    def from_config(cls, data: Any, sources: Sequence[str] | None = None,
                    **per_stream: Sequence[str] | None) -> StreamSources:
        """From `data.{text,image,pair}_sources`, each None (the default) meaning `data.sources`; `sources` and
        `per_stream` (text=..., image=..., pair=...: the command line's) override the config's."""
        default = tuple(sources or data.sources)
        chosen = {}
        for stream in STREAMS:
            given = per_stream.get(stream) or data.get(f"{stream}_sources")
            chosen[stream] = tuple(given) if given else default
        if not any(chosen.values()):
            raise ConfigError("config.data.sources: give the sources to prepare from (--source, or "
                              "config.data.sources, or per stream config.data.text_sources / image_sources / "
                              "pair_sources)")
        for stream, specs in chosen.items():
            if not specs:
                raise ConfigError(f"config.data.{stream}_sources: empty, and config.data.sources gives no default")
        return cls(**chosen)

    @property
    def single(self) -> bool:
        return self.text == self.image == self.pair

    def carves(self) -> dict[tuple[str, ...], list[str]]:
        """Each distinct source list and the streams it feeds, in stream order."""
        carves: dict[tuple[str, ...], list[str]] = {}
        for stream in STREAMS:
            carves.setdefault(getattr(self, stream), []).append(stream)
        return carves

    def as_dict(self) -> dict[str, list[str]]:
        return {stream: list(getattr(self, stream)) for stream in STREAMS}


def carve_folder(streams: Sequence[str]) -> str:
    return "carve-" + "-".join(streams)


def prepare_streams(settings: prepare_lib.PrepareSettings, sources: StreamSources,
                    out: str | os.PathLike) -> dict[str, Any]:
    """Build (or finish) the prepared data in `out` from per-stream sources; returns the manifest. With one source
    list for every stream this is `prepare.prepare`, the layout unchanged."""
    if sources.single:
        return prepare_lib.prepare(settings, sources.text, out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(json.dumps([settings.fingerprint(()), sources.as_dict()]).encode()).hexdigest()
    if (out / prepare_lib.PROGRESS).exists():
        raise SystemExit(f"{out} holds a prepare of one source list for every stream; use a new --out or delete it")
    manifest = prepare_lib.load_json(out / prepare_lib.MANIFEST)
    if manifest is not None:
        if manifest.get("fingerprint") != fingerprint:
            raise SystemExit(f"{out} holds a prepare with other settings or sources; use a new --out or delete it")
        log.info("%s is already complete", out)
        return manifest
    feeding = sources.carves()
    languages = _carve_languages(settings, list(feeding))
    carves = {}
    for specs, streams in feeding.items():
        carve = dataclasses.replace(settings, language=languages[specs],
                                    images=settings.images if {"image", "pair"} & set(streams) else 0)
        log.info("carving %s from %s", "+".join(streams), "; ".join(specs))
        carves[carve_folder(streams)] = (streams, prepare_lib.prepare(carve, specs, out / carve_folder(streams),
                                                                      tokenizer="text" in streams))
    manifest = _manifest(settings, sources, carves, fingerprint)
    prepare_lib.write_json(out / prepare_lib.MANIFEST, manifest)
    return manifest


def _carve_languages(settings: prepare_lib.PrepareSettings,
                     carves: list[tuple[str, ...]]) -> dict[tuple[str, ...], str | None]:
    """The language filter of each carve: `settings.language` where its sources record a language, None where they
    record none (when some other carve's do; when none does, the start-up error of one source list)."""
    if settings.language is None:
        return dict.fromkeys(carves)
    recorded = {specs: prepare_lib.records_language(specs) for specs in carves}
    if not any(recorded.values()):
        raise prepare_lib.no_language(settings.language, [spec for specs in carves for spec in specs])
    for specs, has in recorded.items():
        if not has:
            log.info("config.data.language=%r does not apply to %s, which records no language: its rows are all "
                     "read", settings.language, "; ".join(describe_source(s) for s in specs))
    return {specs: settings.language if has else None for specs, has in recorded.items()}


def _manifest(settings: prepare_lib.PrepareSettings, sources: StreamSources,
              carves: dict[str, tuple[list[str], dict[str, Any]]], fingerprint: str) -> dict[str, Any]:
    """The top manifest: each stream's shards (and the text carve's tokenizer) from the carve that feeds it, with
    paths relative to the top folder."""
    feeding = {stream: (folder, carve) for folder, (streams, carve) in carves.items() for stream in streams}
    shards: dict[str, list[dict[str, Any]]] = {}
    kept: dict[str, int] = {}
    for stream, names in _CONTRIBUTES.items():
        folder, carve = feeding[stream]
        for name in names:
            kept[name] = carve["kept"][name]
            if carve["shards"].get(name):
                shards[name] = [{**shard, "file": f"{folder}/{shard['file']}"} for shard in carve["shards"][name]]
    text_folder, text_carve = feeding["text"]
    tokenizer = text_carve["tokenizer"] and {**text_carve["tokenizer"],
                                             "file": f"{text_folder}/{text_carve['tokenizer']['file']}"}
    image_carve, pair_carve = feeding["image"][1], feeding["pair"][1]
    return {
        "format": prepare_lib.FORMAT,
        "fingerprint": fingerprint,
        "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
        "sources": sorted({spec for specs in sources.as_dict().values() for spec in specs}),
        "stream_sources": sources.as_dict(),
        "carves": {folder: {"streams": streams, "sources": carve["sources"], "language": carve["settings"]["language"],
                            **{key: carve[key] for key in ("kept", "words", "skipped", "budget_met",
                                                           "source_records")}}
                   for folder, (streams, carve) in carves.items()},
        "budgets": text_carve["budgets"],
        "budget_met": {"text": text_carve["budget_met"]["text"], "images": image_carve["budget_met"]["images"]},
        "kept": kept,
        "words": {"text": text_carve["words"]["text"], prepare_lib.HELDOUT: text_carve["words"][prepare_lib.HELDOUT],
                  "pair": pair_carve["words"]["pair"]},
        "images": kept["image"],
        "image_formats": image_carve["image_formats"],
        "skipped": {f"{folder}: {reason}": count for folder, (_, carve) in carves.items()
                    for reason, count in carve["skipped"].items()},
        "shards": shards,
        "tokenizer": tokenizer,
        "complete": True,
    }
