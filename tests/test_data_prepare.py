"""`python -m diva_tf.data.prepare emoji` on fake npm packages (no npm or network needed), and the
emoji loader reading the prepared folder."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diva_tf.config import Config
from diva_tf.data import DataError, load_splits
from diva_tf.data.emoji_prepare import prepare_emoji
from fixtures_data import class_color, emoji_entry, isolated_cache, make_emoji_tarball  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORS = ["google", "twitter"]
ENTRIES = [  # deliberately not in sort_order
    emoji_entry("smile", 3),
    emoji_entry("grinning", 1),
    emoji_entry("flag-fr", 2, category="Flags"),
    emoji_entry("skin-tone-2", 4, category="Component"),
    emoji_entry("only_google", 5, twitter=False),
    emoji_entry("no_twitter_file", 6),
    emoji_entry("+1", 12),
    emoji_entry("cat", 10),
    emoji_entry("dog", 11),
]
KEPT = ["0001_grinning", "0003_smile", "0010_cat", "0011_dog", "0012_+1"]


@pytest.fixture
def npm_cache(tmp_path):
    cache = str(tmp_path / "npm")
    make_emoji_tarball(cache, "google", ENTRIES)
    make_emoji_tarball(cache, "twitter", ENTRIES, skip_images={"no_twitter_file"})
    return cache


def test_prepare_selects_sorts_and_composites(tmp_path, npm_cache):
    out = str(tmp_path / "emoji")
    manifest, did_work = prepare_emoji(out, VENDORS, 64, npm_cache)
    assert did_work
    assert [c["folder"] for c in manifest["classes"]] == KEPT
    assert manifest["num_classes"] == 5 and manifest["vendors"] == VENDORS
    assert manifest["packages"]["google"] == "emoji-datasource-google-16.0.0.tgz"
    assert sorted(os.listdir(os.path.join(out, "images"))) == KEPT
    index = {e["short_name"]: i for i, e in enumerate(ENTRIES)}
    for folder in KEPT:
        files = sorted(os.listdir(os.path.join(out, "images", folder)))
        assert files == ["google.png", "twitter.png"]
        for vendor in VENDORS:
            im = Image.open(os.path.join(out, "images", folder, f"{vendor}.png"))
            px = np.asarray(im)
            assert im.mode == "RGB" and im.size == (64, 64)
            assert (px[0, 0] == 255).all(), "transparent background composited onto white"
            expected = class_color(index[folder.split("_", 1)[1]] + len(vendor))
            assert tuple(px[32, 32]) == expected


def test_second_run_does_no_work_and_other_args_rebuild(tmp_path, npm_cache):
    out = str(tmp_path / "emoji")
    prepare_emoji(out, VENDORS, 64, npm_cache)
    png = os.path.join(out, "images", KEPT[0], "google.png")
    before = os.stat(png).st_mtime_ns
    manifest, did_work = prepare_emoji(out, list(reversed(VENDORS)), 64, npm_cache)
    assert not did_work and os.stat(png).st_mtime_ns == before
    manifest, did_work = prepare_emoji(out, ["google"], 32, npm_cache)
    assert did_work and manifest["vendors"] == ["google"] and manifest["size"] == 32
    assert os.listdir(os.path.join(out, "images", KEPT[0])) == ["google.png"]
    assert Image.open(os.path.join(out, "images", KEPT[0], "google.png")).size == (32, 32)
    # one Google-only emoji more than with Twitter
    assert manifest["num_classes"] == 7


def test_missing_image_file_triggers_rebuild(tmp_path, npm_cache):
    out = str(tmp_path / "emoji")
    prepare_emoji(out, VENDORS, 64, npm_cache)
    os.remove(os.path.join(out, "images", KEPT[2], "twitter.png"))
    assert prepare_emoji(out, VENDORS, 64, npm_cache)[1]


def fake_npm(bin_dir, source_dir, log):
    """An `npm` executable whose `pack <name>` copies <name>-16.0.0.tgz from source_dir."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "npm")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                f"cp {source_dir}/$2-16.0.0.tgz . && echo $2-16.0.0.tgz\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_npm_pack_runs_only_for_missing_tarballs(tmp_path, npm_cache, monkeypatch):
    cache = str(tmp_path / "cache2")
    os.makedirs(cache)
    os.rename(os.path.join(npm_cache, "emoji-datasource-google-16.0.0.tgz"),
              os.path.join(cache, "emoji-datasource-google-16.0.0.tgz"))
    log = str(tmp_path / "npm.log")
    fake_npm(str(tmp_path / "bin"), npm_cache, log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("DIVA_TF_NPM_CACHE", cache)
    manifest, _ = prepare_emoji(str(tmp_path / "out"), VENDORS, 64)
    assert [line.split()[:2] for line in open(log).read().splitlines()] == [
        ["pack", "emoji-datasource-twitter"]]
    assert sorted(os.listdir(cache)) == ["emoji-datasource-google-16.0.0.tgz",
                                         "emoji-datasource-twitter-16.0.0.tgz"]
    assert manifest["num_classes"] == 5


def test_downloads_leave_one_copy_on_disk(tmp_path, npm_cache, monkeypatch):
    """Without --npm_cache the tarballs go to a temporary folder inside OUT, deleted after the
    images are written, and npm is pointed at a throwaway cache of its own: what stays is the
    image folder and its manifest."""
    log = str(tmp_path / "npm.log")
    fake_npm(str(tmp_path / "bin"), npm_cache, log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("DIVA_TF_NPM_CACHE", raising=False)
    out = tmp_path / "out"
    manifest, _ = prepare_emoji(str(out), VENDORS, 64)
    assert manifest["num_classes"] == 5
    assert sorted(os.listdir(out)) == ["images", "manifest.json"]
    calls = [line.split() for line in open(log).read().splitlines()]
    assert [c[:2] for c in calls] == [["pack", "emoji-datasource-google"],
                                      ["pack", "emoji-datasource-twitter"]]
    assert all(c[2] == "--cache" and not os.path.exists(c[3]) for c in calls)


def test_no_npm_and_no_tarball_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    with pytest.raises(DataError, match="npm is not installed.*emoji-datasource-google"):
        prepare_emoji(str(tmp_path / "out"), ["google"], 64, str(tmp_path / "nothing"))


def test_broken_tarball_and_bad_vendor(tmp_path):
    cache = tmp_path / "npm"
    cache.mkdir()
    (cache / "emoji-datasource-google-1.0.0.tgz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a readable npm package tarball"):
        prepare_emoji(str(tmp_path / "out"), ["google"], 64, str(cache))
    with pytest.raises(DataError, match=r"unknown \['samsung'\]"):
        prepare_emoji(str(tmp_path / "out"), ["samsung"], 64, str(cache))


def test_emoji_loader_reads_the_prepared_folder(tmp_path, npm_cache):
    out = str(tmp_path / "emoji")
    prepare_emoji(out, VENDORS, 64, npm_cache)
    splits = load_splits(Config(dataset="emoji", data_dir=out))
    assert splits.train.class_names == KEPT[:2] and splits.test.class_names == KEPT[2:]
    assert splits.train.labels.tolist() == [0, 0, 1, 1]
    assert [os.path.basename(p) for p in splits.test.images[:2]] == ["google.png", "twitter.png"]
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["classes"][0]["short_name"] == "grinning"


def test_cli_twice(tmp_path, npm_cache):
    out = str(tmp_path / "emoji")
    cmd = [sys.executable, "-m", "diva_tf.data.prepare", "emoji", "--out", out, "--vendors",
           ",".join(VENDORS), "--npm_cache", npm_cache]
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert "emoji prepared" in first.stdout and "5 classes x 2 vendors" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert second.returncode == 0 and "already prepared" in second.stdout
    bad = subprocess.run(cmd[:-4] + ["--vendors", "nokia"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown ['nokia']" in bad.stderr
