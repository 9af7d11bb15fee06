"""The download path against a local HTTP server on 127.0.0.1: failures are skipped or retried and counted, the
run completes, and a re-run fetches nothing twice. What is stored: images converted (squash or crop) or, when
already right, kept byte for byte, the same whatever the worker count."""

from __future__ import annotations

import collections
import csv
import http.server
import io
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flava_jax.data import records
from flava_jax.data.images import BadImage, ImageFetcher, stored_image, to_jpeg
from flava_jax.data.pipeline import ImageTransform
from flava_jax.data.prepare import PrepareSettings, prepare, read_stream
from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.sources.rows import WIT_COLUMNS
from flava_jax.data.transforms import load_rgb
from tests.configs import fetch_settings, pipeline_settings, prepare_settings
from tests.data.wit_rows import write_json_with_images

PHOTOS = SAMPLE_DIR / "images"


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with almost no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class _Server:
    """Serves the photos plus misbehaving URLs, counting requests and recording User-Agents."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.agents: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                server.hits[self.path] += 1
                server.agents.add(self.headers.get("User-Agent", ""))
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/photos/"):
                    self._send(200, (PHOTOS / name).read_bytes())
                elif self.path.startswith("/flaky/"):  # 500, then the photo
                    if server.hits[self.path] == 1:
                        self._send(500, b"")
                    else:
                        self._send(200, (PHOTOS / name).read_bytes())
                elif self.path.startswith("/busy/"):  # 429 with Retry-After, then the photo
                    if server.hits[self.path] == 1:
                        self.send_response(429)
                        self.send_header("Retry-After", "0")
                        self.end_headers()
                    else:
                        self._send(200, (PHOTOS / name).read_bytes())
                elif self.path == "/slow.jpg":
                    time.sleep(1.5)
                    self._send(200, (PHOTOS / "rocket.jpg").read_bytes())
                elif self.path == "/truncated.jpg":
                    data = (PHOTOS / "rocket.jpg").read_bytes()
                    self._send(200, data[: len(data) // 2])
                elif self.path == "/notimage.jpg":
                    self._send(200, b"<html><body>Rate limit exceeded</body></html>")
                elif self.path == "/bomb.png":
                    self._send(200, _png_header(20000, 20000))
                else:
                    self._send(404, b"not found")

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            # socketserver's default backlog of 5: with 8 fetch workers connecting at once on a loaded machine,
            # the kernel can drop a SYN before this thread accepts, and the client's connect times out (a retry
            # the server never sees). 64 keeps every connection.
            request_queue_size = 64
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def settled_hits(self, path: str, expected: int, timeout: float = 10.0) -> int:
        """Requests for `path` once `expected` have arrived, or `timeout` has passed. A request the client gave up
        on (its timeout) is counted only when a handler thread gets to read it, which on a loaded machine can be
        after the fetch, and the whole prepare, have returned."""
        deadline = time.monotonic() + timeout
        while self.hits[path] < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.hits[path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


CASES = {  # path -> the manifest's verdict
    "/photos/rocket.jpg": "kept", "/photos/coins.png": "kept", "/photos/chelsea.png": "kept",
    "/flaky/clock_motion.png": "kept", "/busy/rocket.jpg": "kept",
    "/missing.jpg": "image: http 404", "/slow.jpg": "image: timeout", "/truncated.jpg": "image: corrupt image",
    "/notimage.jpg": "image: not an image", "/bomb.png": "image: decompression bomb",
}


def _tsv(path: Path, urls: Iterable[str]) -> Path:
    """A WiT TSV with one English row per image URL."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(WIT_COLUMNS)
        for i, url in enumerate(urls):
            values = dict.fromkeys(WIT_COLUMNS, "")
            values.update(language="en", page_url=f"https://en.wikipedia.org/wiki/P{i}", image_url=url,
                          caption_reference_description=f"Caption number {i}")
            writer.writerow([values[c] for c in WIT_COLUMNS])
    return path


def _settings(tmp_path: Path) -> PrepareSettings:
    return prepare_settings(text_words=-1, images=-1, vocab_size=64, heldout_fraction=0.0, image_size=32,
                            cache_dir=str(tmp_path / "cache"),
                            fetch=fetch_settings(timeout=0.5, retries=2, backoff=0.05, workers=8))


def test_download_failures_are_counted_and_the_run_completes(tmp_path: Path, server: _Server) -> None:
    source = str(_tsv(tmp_path / "rows.tsv", [server.url + url_path for url_path in CASES]))
    manifest = prepare(_settings(tmp_path), [source], tmp_path / "out")
    verdicts = collections.Counter(CASES.values())
    assert manifest["kept"]["image"] == verdicts["kept"] == manifest["train_rows"]
    assert manifest["skipped"] == {k: v for k, v in verdicts.items() if k != "kept"}
    assert manifest["complete"]
    # Retried where it should be: 500 and 429 once each; the timeout on every attempt; a 404 never.
    assert server.hits["/flaky/clock_motion.png"] == 2 and server.hits["/busy/rocket.jpg"] == 2
    assert server.settled_hits("/slow.jpg", 3) == 3 and server.hits["/missing.jpg"] == 1
    assert server.agents == {fetch_settings().user_agent}

    # A re-run (another output, same cache) fetches nothing, and comes to the same verdicts.
    before = dict(server.hits)
    again = prepare(_settings(tmp_path), [source], tmp_path / "out2")
    assert dict(server.hits) == before
    assert again["skipped"] == manifest["skipped"] and again["kept"] == manifest["kept"]
    assert [s["sha256"] for s in again["shards"]["image"]] == [s["sha256"] for s in manifest["shards"]["image"]]


def test_local_folder_and_inline_bytes_need_no_network(tmp_path: Path) -> None:
    fetcher = ImageFetcher(None, [PHOTOS], fetch_settings(), download=False)
    with fetcher:
        local, inline, missing, remote = fetcher.fetch_many(
            ["https://upload.wikimedia.org/x/rocket.jpg", "ignored", "nowhere.jpg", "https://example.org/a.jpg"],
            [None, b"bytes", None, None])
    assert local.data == (PHOTOS / "rocket.jpg").read_bytes() and local.origin == "local"
    assert inline.data == b"bytes" and inline.origin == "inline"
    assert missing.data is None and missing.reason == "image not found locally"
    assert remote.data is None and remote.reason == "image not found locally"


def test_local_lookups_stay_inside_the_image_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A dataset row must not choose which of the host's files are read: an absolute path, `..` or a symlink out of
    the folder is refused with its reason and counted by prepare; names inside it, subfolders too, are read."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jpg").write_bytes((PHOTOS / "rocket.jpg").read_bytes())
    (folder / "coins.png").write_bytes((PHOTOS / "coins.png").read_bytes())
    (tmp_path / "outside.png").write_bytes((PHOTOS / "chelsea.png").read_bytes())  # a real image, not to be read
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    refused = [str(tmp_path / "outside.png"), "../outside.png", "link.png"]
    kept = ["sub/a.jpg", "https://upload.wikimedia.org/x/coins.png"]
    with ImageFetcher(None, [folder], fetch_settings(), download=False) as fetcher:
        results = fetcher.fetch_many(refused + kept, [None] * 5)
    for url, result in zip(refused, results[:3], strict=True):
        assert (result.data, result.reason, result.detail) == (None, "image path outside data.image_dirs", url)
    assert [r.data for r in results[3:]] == [(PHOTOS / "rocket.jpg").read_bytes(), (PHOTOS / "coins.png").read_bytes()]

    settings = prepare_settings(text_words=-1, images=-1, vocab_size=64, heldout_fraction=0.0, image_size=16,
                                image_dirs=(str(folder),), download=False)
    with caplog.at_level(logging.WARNING, logger="flava_jax"):
        manifest = prepare(settings, [str(_tsv(tmp_path / "rows.tsv", refused + kept))], tmp_path / "out")
    assert manifest["skipped"] == {"image: image path outside data.image_dirs": 3}
    assert manifest["kept"]["image"] == 2
    for url in refused:  # each skip names its row
        assert f"row with image {url}: skipped, image: image path outside data.image_dirs" in caplog.text


def test_stored_images_squash_or_keep_the_aspect_ratio() -> None:
    """squash (the reference): 640x427 -> 224x224 bicubic, aspect ratio lost; crop: the centre square kept."""
    data = (PHOTOS / "rocket.jpg").read_bytes()
    original = Image.open(io.BytesIO(data)).convert("RGB")
    squashed = Image.open(io.BytesIO(to_jpeg(data, 224, "squash")))
    cropped = Image.open(io.BytesIO(to_jpeg(data, 224, "crop")))
    assert squashed.size == cropped.size == (224, 224) and squashed.format == "JPEG"
    reference_squash = np.asarray(original.resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    width = round(640 * 224 / 427)
    reference_crop = np.asarray(original.resize((width, 224), Image.Resampling.BICUBIC).crop(
        ((width - 224) // 2, 0, (width - 224) // 2 + 224, 224)), np.float32)
    # JPEG at quality 95 stays within a few levels of what it encodes, far from the other mode's result.
    assert np.abs(np.asarray(squashed, np.float32) - reference_squash).mean() < 3
    assert np.abs(np.asarray(cropped, np.float32) - reference_crop).mean() < 3
    assert np.abs(np.asarray(cropped, np.float32) - reference_squash).mean() > 10
    gray = to_jpeg((PHOTOS / "coins.png").read_bytes(), 32)
    assert Image.open(io.BytesIO(gray)).mode == "RGB"


def encoded(image: Image.Image, kind: str = "PNG", **options: Any) -> bytes:
    """`image` saved as `kind` with PIL's `options`."""
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


def with_alpha(image: Image.Image) -> Image.Image:
    """`image` (RGB or L) with an alpha gradient from transparent to opaque."""
    image = image.convert("RGBA" if image.mode == "RGB" else "LA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


def pipeline_pixels(data: bytes) -> np.ndarray:
    """The uint8 pixels training's pipeline (ImageTransform) makes of stored image bytes."""
    transform = ImageTransform(pipeline_settings("unused"))
    return transform.encode(records.Example(0, "", data), np.random.default_rng(0))["pixels"]


def test_an_image_already_right_is_stored_byte_for_byte() -> None:
    """A size x size PNG or JPEG is kept when the pipeline decodes it to the reference's pixels (load_rgb, which
    flattens transparency onto white) exactly; transparency, another size, another format or several frames
    are converted as before (to_jpeg), as is everything with reencode; a kept image is still validated."""
    photo = Image.open(PHOTOS / "chelsea.png").resize((32, 32), Image.Resampling.BICUBIC)
    grey = photo.convert("L")
    kept = {"RGB": encoded(photo), "L": encoded(grey), "P": encoded(photo.convert("P")),
            "RGBA, opaque": encoded(photo.convert("RGBA")),
            "16-bit grey": encoded(Image.fromarray(np.asarray(grey, np.uint16) * 257)),
            "JPEG": encoded(photo, "JPEG", quality=60), "JPEG grey": encoded(grey, "JPEG"),
            "JPEG CMYK": encoded(photo.convert("CMYK"), "JPEG")}
    transparent = {"RGBA": encoded(with_alpha(photo)), "LA": encoded(with_alpha(grey)),
                   "L with a transparent grey": encoded(grey, transparency=int(np.asarray(grey)[0, 0]))}
    converted = {**transparent, "31 rows": encoded(photo.resize((32, 31))), "GIF": encoded(photo, "GIF"),
                 "animated PNG": encoded(photo, save_all=True, append_images=[photo.rotate(90)])}
    for name, data in kept.items():
        assert stored_image(data, 32) == data, name
        assert np.array_equal(pipeline_pixels(data), np.asarray(load_rgb(data))), name
        assert stored_image(data, 32, reencode=True) == to_jpeg(data, 32), name
    for name, data in converted.items():
        assert stored_image(data, 32) == to_jpeg(data, 32), name
    for name, data in transparent.items():  # kept, they would reach the model with their transparent pixels' colour
        assert not np.array_equal(pipeline_pixels(data), np.asarray(load_rgb(data))), name
    for name in ("RGB", "JPEG"):  # cut in the pixel data: the header still reads
        with pytest.raises(BadImage, match="corrupt image"):
            stored_image(kept[name][: len(kept[name]) * 3 // 4], 32)


def _inline_source(path: Path) -> tuple[Path, dict[str, int], list[bytes]]:
    """"WIT with images" JSON lines carrying the bundled photos (RGB and grey, JPEG and PNG, one given an alpha
    channel), three bad images, then three 32x32 ones: a grey PNG and a JPEG (already right at image_size 32) and
    a PNG with transparency; returns the path, the skips the bad ones must give and the two already right."""
    rocket = (PHOTOS / "rocket.jpg").read_bytes()
    small = [Image.open(PHOTOS / name).resize((32, 32)) for name in ("coins.png", "rocket.jpg", "chelsea.png")]
    right = [encoded(small[0]), encoded(small[1], "JPEG")]
    images = [rocket, (PHOTOS / "coins.png").read_bytes(), b"<html>Rate limit exceeded</html>",
              (PHOTOS / "chelsea.png").read_bytes(), rocket[: len(rocket) // 2],
              encoded(with_alpha(Image.open(PHOTOS / "chelsea.png"))), _png_header(20000, 20000),
              (PHOTOS / "clock_motion.png").read_bytes(), *right, encoded(with_alpha(small[2]))]
    write_json_with_images(path, images)
    return path, {"image: not an image": 1, "image: corrupt image": 1, "image: decompression bomb": 1}, right


def test_one_worker_or_two_give_the_same_shards_and_skips(tmp_path: Path) -> None:
    """The image work in worker processes: the same bytes in the same order (the already right ones kept), bad
    images the same counted skips, and the worker count is free to change on resume."""
    source, skips, right = _inline_source(tmp_path / "rows.json")
    settings = dict(text_words=-1, images=-1, vocab_size=64, heldout_fraction=0.0, image_size=32, fetch_batch=3,
                    chunk_records=5, download=False)
    one = prepare(prepare_settings(**settings, prepare_workers=1), [str(source)], tmp_path / "one")
    two = prepare(prepare_settings(**settings, prepare_workers=2), [str(source)], tmp_path / "two")
    assert one["skipped"] == two["skipped"] == skips
    assert one["kept"]["image"] == two["kept"]["image"] == 8
    assert one["shards"] == two["shards"]  # each shard's sha256 and record count
    stored = [records.decode(r).image for r in read_stream(tmp_path / "one", "image")]
    assert stored[5:7] == right  # the grey PNG and the JPEG, 6th and 7th of the good images
    converted = stored[:5] + stored[7:]
    assert all(Image.open(io.BytesIO(image)).format == "JPEG" for image in converted)
    assert one["image_formats"] == two["image_formats"] == {
        "png": {"count": 1, "bytes": len(right[0])},
        "jpeg": {"count": 7, "bytes": len(right[1]) + sum(map(len, converted))}}
    again = prepare(prepare_settings(**settings, prepare_workers=2), [str(source)], tmp_path / "one")
    assert again["shards"] == one["shards"]


def test_a_dead_worker_is_a_clear_error() -> None:
    """A worker process killed mid-slice (as by the kernel's out-of-memory killer) ends prepare in one line."""
    import concurrent.futures
    import multiprocessing

    from flava_jax.data.prepare import _Scheduler

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool, \
            pytest.raises(SystemExit, match="prepare worker process died.*fewer --workers"):
        _Scheduler._outcome(pool.submit(os._exit, 1))


def test_a_worker_count_below_one_is_a_config_error(tmp_path: Path) -> None:
    from flava_jax.common.settings import ConfigError

    source, _, _ = _inline_source(tmp_path / "rows.json")
    with pytest.raises(ConfigError, match="config.data.prepare_workers=0"):
        prepare(prepare_settings(prepare_workers=0, download=False), [str(source)], tmp_path / "out")
