"""Getting WiT images and making them safe to train on.

`ImageFetcher` finds an image's bytes in the row itself (base64 sources), in local folders (by the URL's file
name), or on the web: concurrent downloads with a timeout, retries with exponential backoff on 429/5xx and
network errors, a User-Agent, and a cache that records successes and final failures, so a re-run never fetches
anything twice. `stored_image` then decodes and validates the bytes (not an image, truncated, decompression bomb)
and stores them as they are when they are already right (size x size PNG or JPEG whose pixels the pipeline reads
as the reference would: the paper's Hub data), else `to_jpeg`'s: resized as JPEG, squashed to size x size as the
reference did, or aspect-preserving as a switch; `convert_fetched` applies it to fetched images in order (prepare's
worker processes each run it on their own slice of the sources).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from flava_jax.data.transforms import load_rgb

USER_AGENT = "flava_jax/0.1 (WiT image fetcher for research; https://github.com/google-research-datasets/wit)"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
KEPT_FORMATS = frozenset({"PNG", "JPEG"})  # stored as they are when already right; the pipeline decodes both
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """Bytes that are not a usable image; `reason` is the short label the manifest counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Fetched:
    """The outcome of fetching one image: bytes, or the reason there are none."""

    data: bytes | None
    reason: str | None = None
    detail: str = ""
    origin: str = ""  # "inline", "local", "cache" or "web"


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """How images are fetched over the network (config.data.fetch)."""

    timeout: float
    retries: int  # attempts after the first, for 429/5xx and network errors
    backoff: float  # seconds before the first retry, doubling after each
    max_backoff: float
    workers: int
    max_bytes: int
    user_agent: str


class ImageFetcher:
    """Image bytes for WiT rows, from inline data, local folders, the download cache or the web."""

    def __init__(self, cache_dir: str | os.PathLike | None, local_dirs: Sequence[str | os.PathLike],
                 settings: FetchSettings, download: bool = True) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.local_dirs = [Path(d) for d in local_dirs]
        self.settings = settings
        self.download = download
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, settings.workers))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch_many(self, urls: Iterable[str | None], inline: Iterable[bytes | None]) -> list[Fetched]:
        """Fetch each image concurrently (inline bytes need no thread); the results keep the order of `urls`."""
        jobs = [Fetched(data, origin="inline") if data is not None else self._pool.submit(self.fetch, url)
                for url, data in zip(urls, inline, strict=True)]
        return [j if isinstance(j, Fetched) else j.result() for j in jobs]

    def fetch(self, url: str | None, inline: bytes | None = None) -> Fetched:
        if inline is not None:
            return Fetched(inline, origin="inline")
        if not url:
            return Fetched(None, "no image url")
        local = self._local(url)
        if local is not None:
            return local
        cached = self._cached(url)
        if cached is not None:
            return cached
        if not self.download or not url.lower().startswith(("http://", "https://")):
            return Fetched(None, "image not found locally", url)
        result = self._download(url)
        self._store(url, result)
        return result

    # ----------------------------------------------------------------------------------------- sources
    def _local(self, url: str) -> Fetched | None:
        """The file in a local folder named like `url`'s file name, or at `url` inside it; a refusal when `url`
        points outside every folder (an absolute path, `..`, a symlink out) and nothing inside matches; else None."""
        name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
        if not name:
            return None
        outside = False
        for directory in self.local_dirs:
            root = directory.resolve()
            for candidate in (directory / name, directory / url):
                try:
                    path = candidate.resolve()  # symlinks and `..` followed, so the check sees where a read would go
                except RuntimeError:  # a symlink loop: there is no file to read
                    continue
                if not path.is_relative_to(root):
                    outside = True  # a dataset's rows must not choose which of the host's files are read
                elif path.is_file():
                    return Fetched(path.read_bytes(), origin="local")
        return Fetched(None, "image path outside data.image_dirs", url) if outside else None

    def _cache_paths(self, url: str) -> tuple[Path, Path]:
        assert self.cache_dir is not None
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        base = self.cache_dir / digest[:2] / digest
        return base.with_suffix(".img"), base.with_suffix(".fail.json")

    def _cached(self, url: str) -> Fetched | None:
        if self.cache_dir is None:
            return None
        data_path, fail_path = self._cache_paths(url)
        if data_path.is_file():
            return Fetched(data_path.read_bytes(), origin="cache")
        if fail_path.is_file():
            failure = json.loads(fail_path.read_text())
            return Fetched(None, failure["reason"], failure.get("detail", ""), origin="cache")
        return None

    def _store(self, url: str, result: Fetched) -> None:
        if self.cache_dir is None:
            return
        data_path, fail_path = self._cache_paths(url)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        target, payload = (data_path, result.data) if result.data is not None else (
            fail_path, json.dumps({"url": url, "reason": result.reason, "detail": result.detail}).encode())
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(payload)
        tmp.replace(target)  # atomic: an interrupted run never leaves half an image in the cache

    def _download(self, url: str) -> Fetched:
        s = self.settings
        request = urllib.request.Request(url, headers={"User-Agent": s.user_agent})
        delay = s.backoff
        last: tuple[str, str] = ("download failed", "")
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(min(delay, s.max_backoff))
                delay *= 2
            try:
                with urllib.request.urlopen(request, timeout=s.timeout) as response:
                    data = response.read(s.max_bytes + 1)
                if len(data) > s.max_bytes:
                    return Fetched(None, "image too large", f"> {s.max_bytes} bytes", origin="web")
                return Fetched(data, origin="web")
            except urllib.error.HTTPError as e:
                last = (f"http {e.code}", str(e.reason))
                if e.code not in RETRY_STATUS:
                    break
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.isdigit():
                    delay = max(delay, float(retry_after))
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = ("timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else
                        "network error", str(reason))
        return Fetched(None, last[0], last[1], origin="web")


def stored_image(data: bytes, size: int, mode: str = "squash", quality: int = 95, max_pixels: int = 89_478_485,
                 reencode: bool = False) -> bytes:
    """The bytes prepare stores for an image: `data` itself when it is `already_right` (unless `reencode`), else
    `to_jpeg`'s. Either way the image is decoded and validated first. Raises BadImage with the reason."""
    image = _decoded(data, max_pixels)
    return data if not reencode and already_right(image, size) else _jpeg(image, size, mode, quality)


def to_jpeg(data: bytes, size: int, mode: str = "squash", quality: int = 95, max_pixels: int = 89_478_485) -> bytes:
    """Decode, validate and re-encode as a size x size RGB JPEG. Raises BadImage with the reason.

    mode "squash" resizes to size x size with bicubic, ignoring the aspect ratio (the reference); "crop" resizes
    the shorter side to `size` (bicubic) and takes the centre square.
    """
    return _jpeg(_decoded(data, max_pixels), size, mode, quality)


def already_right(image: Image.Image, size: int) -> bool:
    """Whether `image`'s own bytes give the pipeline the pixels the reference trains on: size x size (nothing to
    resize), one frame of PNG or JPEG (all read from the header), and `ImageTransform`'s convert("RGB") equal to
    `load_rgb`'s (transparency flattened onto white): so for RGB, compared pixel for pixel for any other mode
    (alpha, a transparent colour, grey, palette, 16 bits)."""
    if image.size != (size, size) or image.format not in KEPT_FORMATS or getattr(image, "is_animated", False):
        return False
    return image.mode == "RGB" or np.array_equal(np.asarray(image.convert("RGB")), np.asarray(load_rgb(image)))


def stored_format(data: bytes) -> str:
    """The format `stored_image` stored `data` in, "png" or "jpeg", by the PNG signature (it stores no other)."""
    return "png" if data.startswith(PNG_SIGNATURE) else "jpeg"


def _decoded(data: bytes, max_pixels: int) -> Image.Image:
    """`data` opened and decoded, or BadImage: not an image, a decompression bomb, truncated or corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression bomb", str(e)) from e
    except (Image.UnidentifiedImageError, OSError) as e:
        raise BadImage("not an image", str(e)) from e
    width, height = image.size  # known from the header, before any pixel is decoded
    if width * height > max_pixels:
        raise BadImage("decompression bomb", f"{width}x{height} exceeds {max_pixels} pixels")
    try:
        image.load()  # a kept image too: a truncated one would otherwise fail in training's pipeline
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated or corrupt data
        raise BadImage("corrupt image", f"{type(e).__name__}: {e}") from e
    return image


def _jpeg(image: Image.Image, size: int, mode: str, quality: int) -> bytes:
    """A decoded image flattened to RGB, resized by `mode` (to_jpeg) and encoded as JPEG."""
    image = load_rgb(image)
    if mode == "squash":
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    elif mode == "crop":
        scale = size / min(image.size)
        resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        raise ValueError(f"image resize mode {mode!r} is not 'squash' or 'crop'")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, e.g. under taskset or a cgroup)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def convert_fetched(convert: Callable[[bytes], bytes], fetched: Sequence[Fetched]) -> list[Fetched]:
    """Each fetched image converted by `convert` (stored_image: decode, validate, resize and encode what is not
    already right), a BadImage becoming its reason; failed fetches as they are; in order."""
    converted = []
    for item in fetched:
        if item.data is None:
            converted.append(item)
            continue
        try:
            converted.append(Fetched(convert(item.data), origin=item.origin))
        except BadImage as e:
            converted.append(Fetched(None, e.reason, str(e), origin=item.origin))
    return converted
