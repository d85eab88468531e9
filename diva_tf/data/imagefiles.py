"""Image files on disk: listing class folders, and a load-time readability check so a corrupt or
non-image file is skipped with one warning instead of failing deep inside tf.data.

The check (PIL header parse + `verify`, a full decode of JPEGs that look truncated, and a format
TensorFlow can decode) runs in a thread pool and its results are cached on disk per file (keyed by
size and mtime), so a large dataset is checked once. Cache folder: $DIVA_TF_CACHE_DIR, else $XDG_CACHE_HOME/diva_tf, else ~/.cache/diva_tf.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

from absl import logging
from PIL import Image

from diva_tf.core.atomic import atomic_file
from diva_tf.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
TF_DECODABLE = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}
_CHECK_VERSION = 2


def cache_dir() -> str:
    return os.environ.get("DIVA_TF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diva_tf")


def require_dir(path: str, what: str) -> str:
    """path if it is an existing folder, else a DataError naming the flag to fix."""
    if not path:
        raise DataError(f"--data_dir is not set: point it at the {what}")
    if not os.path.isdir(path):
        raise DataError(f"--data_dir={path} does not exist or is not a folder (expected the "
                        f"{what})")
    return path


def list_class_dirs(root: str) -> list[str]:
    """Names of the visible sub-folders of root, Python string order."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: str) -> list[str]:
    """Image files (by extension) under folder, recursively, in sorted relative-path order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return sorted(found)


def _has_jpeg_end(path: str) -> bool:
    """Whether the end-of-image marker is near the end of the file (absent: truncated, or
    trailing data after it)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        return b"\xff\xd9" in f.read()


def probe_image(path: str) -> str:
    """'' if TensorFlow will be able to decode the file, else the reason it cannot. Fast: PIL's
    header parse and verify; a JPEG is fully decoded only when its end marker is not at the end
    (verify does not read JPEG scan data, and TensorFlow rejects truncated JPEGs)."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG" and not _has_jpeg_end(path):
            with Image.open(path) as im:
                im.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "skip it".
        return f"{type(e).__name__}: {e}".strip()
    if fmt not in TF_DECODABLE:
        return f"{fmt} images cannot be decoded by TensorFlow"
    return ""


def _cache_file(paths: list[str]) -> str:
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    digest = hashlib.sha1(root.encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), "image_check", f"{digest}.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data["files"] if data.get("version") == _CHECK_VERSION else {}
    except (OSError, ValueError, KeyError):
        return {}


def _write_cache(path: str, files: dict) -> None:
    try:
        with atomic_file(path) as f:
            json.dump({"version": _CHECK_VERSION, "files": files}, f)
    except OSError as e:
        logging.debug("image check cache not written (%s)", e)


def _stamp(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def check_images(paths: list[str], workers: int = 8) -> dict[str, str]:
    """{path: reason} for the files that cannot be used; results cached per file."""
    if not paths:
        return {}
    stamps = {p: _stamp(p) for p in paths}
    bad = {p: "file not found" for p, stamp in stamps.items() if stamp is None}
    cache_path = _cache_file(paths)
    cache = _read_cache(cache_path)
    todo = [p for p, stamp in stamps.items()
            if stamp is not None and cache.get(os.path.abspath(p), [None])[:2] != stamp]
    if todo:
        logging.info("checking %d image files (cached for later runs)", len(todo))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for p, reason in zip(todo, pool.map(probe_image, todo)):
                cache[os.path.abspath(p)] = stamps[p] + [reason]
        _write_cache(cache_path, cache)
    for p, stamp in stamps.items():
        if stamp is not None and cache[os.path.abspath(p)][2]:
            bad[p] = cache[os.path.abspath(p)][2]
    return bad


def drop_unreadable(classes: list, what: str) -> list:
    """The ClassList without unreadable files (one warning with the count and a few examples);
    classes left empty are dropped too. Encoded-bytes images are trusted as they are."""
    paths = [p for _, images in classes for p in images if isinstance(p, str)]
    bad = check_images(paths)
    if not bad:
        return classes
    examples = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:3])
    logging.warning("%s: skipping %d unreadable image file(s), e.g. %s", what, len(bad), examples)
    kept = [(name, [p for p in images if p not in bad]) for name, images in classes]
    empty = [name for name, images in kept if not images]
    if empty:
        logging.warning("%s: dropping %d class(es) with no readable image: %s", what, len(empty),
                        ", ".join(empty[:5]))
    return [(name, images) for name, images in kept if images]


def require_images(classes: list, root: str) -> list:
    """The ClassList unchanged, or a DataError if it holds no image at all."""
    if not any(images for _, images in classes):
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return classes
