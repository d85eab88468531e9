"""Generators of tiny dataset trees in each supported layout, for the data tests."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the image-check cache of a test module (module-scoped fixtures included) in a
    temporary folder instead of the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIVA_TF_CACHE_DIR", str(tmp_path_factory.mktemp("diva_cache")))
        yield


def class_color(i: int) -> tuple:
    return ((37 * i) % 256, (91 * i + 40) % 256, (173 * i + 90) % 256)


def image_array(i: int, size=(24, 20), seed: int = 0) -> np.ndarray:
    """An RGB image [h, w, 3] of class colour i with a little noise; size is (width, height)."""
    rng = np.random.RandomState(seed)
    img = np.array(class_color(i), np.float32) + rng.normal(0, 6, (size[1], size[0], 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: str, i: int = 0, size=(24, 20), seed: int = 0, mode: str = "RGB") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image_array(i, size, seed)).convert(mode).save(path)
    return path


def image_bytes(i: int, size=(24, 20), fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image_array(i, size)).save(out, fmt)
    return out.getvalue()


def make_class_tree(root: str, class_sizes: dict, ext: str = "jpg") -> str:
    """root/<class>/img_<k>.<ext>, class index = position in class_sizes."""
    for i, (name, n) in enumerate(class_sizes.items()):
        for k in range(n):
            write_image(os.path.join(root, name, f"img_{k}.{ext}"), i, seed=k)
    return root


def cub_names(n: int) -> list[str]:
    return [f"{i:03d}.Bird_{i}" for i in range(1, n + 1)]


def make_cub(root: str, n_classes: int = 6, per_class: int = 2) -> str:
    """root/CUB_200_2011/images/NNN.Bird_N/*.jpg; returns root (the parent)."""
    make_class_tree(os.path.join(root, "CUB_200_2011", "images"),
                    {n: per_class for n in cub_names(n_classes)})
    return root


def make_sop(root: str, train_ids=(1, 2, 3), test_ids=(4, 5, 6), per_class: int = 2,
             info_files: bool = True) -> str:
    """Stanford_Online_Products layout; lists in Info_Files/ (paths relative to root) or in root."""
    list_dir = os.path.join(root, "Info_Files") if info_files else root
    os.makedirs(list_dir, exist_ok=True)
    image_id = 1
    for fname, ids in (("Ebay_train.txt", train_ids), ("Ebay_test.txt", test_ids)):
        lines = ["image_id class_id super_class_id path"]
        for cid in ids:
            for k in range(per_class):
                rel = f"thing_final/{cid}_{k}.JPG"
                write_image(os.path.join(root, rel), cid, seed=k)
                lines.append(f"{image_id} {cid} 1 {rel}")
                image_id += 1
        with open(os.path.join(list_dir, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


def emoji_entry(short_name: str, sort_order: int, category: str = "Smileys & Emotion",
                vendors=("google", "twitter"), **has_img) -> dict:
    flags = {f"has_img_{v}": has_img.get(v, v in vendors)
             for v in ("google", "twitter", "apple", "facebook")}
    unified = f"{0x1F600 + sort_order:X}"
    return {"name": short_name.upper(), "unified": unified, "image": f"{unified.lower()}.png",
            "short_name": short_name, "category": category, "sort_order": sort_order, **flags}


def emoji_png(i: int, vendor: str) -> bytes:
    """A 64 px RGBA drawing: transparent background, an opaque coloured disc."""
    yy, xx = np.mgrid[0:64, 0:64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[disc] = class_color(i + len(vendor)) + (255,)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()


def make_emoji_tarball(cache_dir: str, vendor: str, entries: list[dict],
                       version: str = "16.0.0", skip_images=()) -> str:
    """An npm-pack-like emoji-datasource-<vendor>-<version>.tgz with emoji.json and 64 px PNGs
    for the entries that have has_img_<vendor> (except those named in skip_images)."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"emoji-datasource-{vendor}-{version}.tgz")

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as tar:
        package = {"name": f"emoji-datasource-{vendor}", "version": version}
        add(tar, "package/package.json", json.dumps(package).encode())
        add(tar, "package/emoji.json", json.dumps(entries).encode())
        for i, e in enumerate(entries):
            if e[f"has_img_{vendor}"] and e["short_name"] not in skip_images:
                add(tar, f"package/img/{vendor}/64/{e['image']}", emoji_png(i, vendor))
    return path
