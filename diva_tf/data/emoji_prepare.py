"""Build the emoji dataset folder from the npm packages `emoji-datasource-<vendor>`.

A class is one emoji; its images are the vendors' drawings. From each package's
`package/emoji.json` and `package/img/<vendor>/64/<image>`: the categories Flags (exact duplicates
across classes) and Component (skin-tone swatches) are dropped, and an emoji is kept only if every
selected vendor has an image of it. RGBA drawings are composited onto white and written as RGB PNGs
to OUT/images/<zero-padded sort_order>_<short_name>/<vendor>.png; OUT/manifest.json (written last)
records the vendors, size, packages and the classes in sort_order. A folder already prepared with
the same vendors and size is left as it is.

Tarballs come from `npm pack` (four packages, about 340 MB, of which the 64 px drawings kept are
about 43 MB). With --npm_cache or $DIVA_TF_NPM_CACHE they are downloaded into (and reused from) that
folder; otherwise into a temporary folder inside OUT that is deleted once the images are written,
so one copy of the data stays on disk: npm's own cache goes to a throwaway folder too. Apple and
Facebook drawings are not licensed for redistribution: OUT is user data, never part of the repo.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from absl import logging
from PIL import Image

from diva_tf.core.atomic import atomic_file, atomic_folder
from diva_tf.data.emoji import IMAGES, MANIFEST, MANIFEST_FORMAT, read_manifest
from diva_tf.data.errors import DataError

VENDORS = ("google", "twitter", "apple", "facebook")
DROP_CATEGORIES = ("Flags", "Component")
SOURCE_SIZE = 64
NPM_CACHE_ENV = "DIVA_TF_NPM_CACHE"


def package_name(vendor: str) -> str:
    return f"emoji-datasource-{vendor}"


def find_tarball(cache_dir: str, vendor: str) -> str | None:
    """The newest `emoji-datasource-<vendor>-<version>.tgz` in cache_dir, if any."""
    pattern = re.compile(rf"^{re.escape(package_name(vendor))}-(\d+(?:\.\d+)*)\.tgz$")
    found = []
    if os.path.isdir(cache_dir):
        for name in os.listdir(cache_dir):
            m = pattern.match(name)
            if m:
                found.append((tuple(int(p) for p in m.group(1).split(".")), name))
    return os.path.join(cache_dir, max(found)[1]) if found else None


def npm_pack(vendor: str, cache_dir: str) -> str:
    """Download the vendor's package tarball into cache_dir with `npm pack`."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"npm is not installed: install Node.js/npm, or put "
                        f"{package_name(vendor)}-<version>.tgz into {cache_dir} (--npm_cache)")
    os.makedirs(cache_dir, exist_ok=True)
    logging.info("npm pack %s (in %s)", package_name(vendor), cache_dir)
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=cache_dir) as npm_own_cache:
        proc = subprocess.run([npm, "pack", package_name(vendor), "--cache", npm_own_cache],
                              cwd=cache_dir, capture_output=True, text=True)
    tarball = find_tarball(cache_dir, vendor)
    if proc.returncode != 0 or tarball is None:
        raise DataError(f"npm pack {package_name(vendor)} failed (exit {proc.returncode}): "
                        f"{proc.stderr.strip()[-500:]}")
    return tarball


def read_package(tarball: str, vendor: str) -> tuple[list[dict], dict[str, bytes]]:
    """(emoji.json entries, {image file name: PNG bytes} of the 64 px drawings), in one pass."""
    prefix = f"package/img/{vendor}/{SOURCE_SIZE}/"
    entries, images = None, {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.name == "package/emoji.json":
                    entries = json.load(tar.extractfile(member))
                elif member.name.startswith(prefix):
                    images[member.name[len(prefix):]] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, ValueError) as e:
        raise DataError(f"{tarball}: not a readable npm package tarball ({e}); delete it to "
                        "download it again") from None
    if entries is None or not images:
        raise DataError(f"{tarball}: no package/emoji.json or no {prefix} images in it")
    return entries, images


def select_classes(packages: dict[str, tuple[list[dict], dict]]) -> list[dict]:
    """Emojis outside DROP_CATEGORIES drawn by every vendor, in sort_order; metadata from the
    first vendor's emoji.json, presence from each vendor's own."""
    vendors = list(packages)
    drawn = [{e["unified"] for e in entries if e.get(f"has_img_{v}") and e["image"] in images}
             for v, (entries, images) in packages.items()]
    first = packages[vendors[0]][0]
    kept = [e for e in first if e["category"] not in DROP_CATEGORIES
            and all(e["unified"] in d for d in drawn)]
    return sorted(kept, key=lambda e: e["sort_order"])


def folder_name(entry: dict, width: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_+\-]", "_", entry["short_name"])
    return f"{entry['sort_order']:0{width}d}_{safe}"


def to_rgb_png(png: bytes, size: int) -> bytes:
    """RGBA drawing composited onto white, resized to size x size if needed, as RGB PNG bytes."""
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "PNG")
    return out.getvalue()


def is_prepared(out: str, vendors: list[str], size: int) -> dict | None:
    """The manifest if out already holds this very dataset (same vendors and size, files there)."""
    manifest = read_manifest(out)
    if (manifest is None or sorted(manifest["vendors"]) != sorted(vendors)
            or manifest["size"] != size):
        return None
    root = os.path.join(out, IMAGES)
    complete = all(os.path.isfile(os.path.join(root, c["folder"], f"{v}.png"))
                   for c in manifest["classes"] for v in manifest["vendors"])
    return manifest if complete else None


def _write_images(classes: list[dict], packages: dict, size: int, root: str) -> None:
    jobs = [(os.path.join(root, c["folder"], f"{v}.png"), packages[v][1][c["image"]])
            for c in classes for v in packages]
    for c in classes:
        os.makedirs(os.path.join(root, c["folder"]))

    def write(job):
        path, png = job
        with open(path, "wb") as f:
            f.write(to_rgb_png(png, size))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, jobs))


def prepare_emoji(out: str, vendors=VENDORS, size: int = SOURCE_SIZE,
                  npm_cache: str | None = None) -> tuple[dict, bool]:
    """Prepare (or find already prepared) the emoji folder; returns (manifest, did_work)."""
    vendors = list(dict.fromkeys(vendors))
    unknown = [v for v in vendors if v not in VENDORS]
    if unknown or not vendors:
        raise DataError(f"--vendors: unknown {unknown or 'empty list'}; choose from {VENDORS}")
    if size <= 0:
        raise DataError(f"--size={size} must be positive")
    manifest = is_prepared(out, vendors, size)
    if manifest is not None:
        return manifest, False
    start = time.time()
    os.makedirs(out, exist_ok=True)
    cache = npm_cache or os.environ.get(NPM_CACHE_ENV)
    folder = cache or tempfile.mkdtemp(prefix=".download-", dir=out)  # a kept cache, or deleted
    try:
        tarballs = {v: find_tarball(folder, v) or npm_pack(v, folder) for v in vendors}
        with ThreadPoolExecutor(max_workers=2) as pool:
            packages = dict(zip(vendors, pool.map(lambda v: read_package(tarballs[v], v), vendors)))
    finally:
        if not cache:
            shutil.rmtree(folder, ignore_errors=True)
    selected = select_classes(packages)
    if not selected:
        raise DataError(f"no emoji has an image for every vendor of {vendors}")
    width = max(4, len(str(max(e["sort_order"] for e in selected))))
    classes = [{"folder": folder_name(e, width), "short_name": e["short_name"],
                "unified": e["unified"], "name": e.get("name"), "category": e["category"],
                "sort_order": e["sort_order"], "image": e["image"]} for e in selected]

    with atomic_folder(os.path.join(out, IMAGES), durable=False) as tmp_root:  # no fsync per image
        _write_images(classes, packages, size, tmp_root)
        if os.path.exists(os.path.join(out, MANIFEST)):  # the folder is complete once it has one
            os.remove(os.path.join(out, MANIFEST))
    manifest = {"format": MANIFEST_FORMAT, "dataset": "emoji", "vendors": vendors, "size": size,
                "packages": {v: os.path.basename(t) for v, t in tarballs.items()},
                "dropped_categories": list(DROP_CATEGORIES), "num_classes": len(classes),
                "classes": [{k: v for k, v in c.items() if k != "image"} for c in classes]}
    with atomic_file(os.path.join(out, MANIFEST)) as f:
        json.dump(manifest, f, indent=1)
    logging.info("emoji: %d classes x %d vendors written to %s in %.1f s", len(classes),
                 len(vendors), out, time.time() - start)
    return manifest, True
