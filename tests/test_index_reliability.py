"""Issue 25 for the retrieval index and export/client.py: a served model that is not the index's
is refused (probe check), a killed rebuild keeps the previous index, and every bad input is one
`error:` line (exit 2) while the good queries are still answered."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import textwrap

import numpy as np
import pytest
from PIL import Image

from diva_tf.serving import export
from diva_tf.serving import index as idx
from export_helpers import (CLIENT, PYTHON, load_client, run, start_server, tiny_config)
from synthetic import make_folder_dataset


def export_seed(base: str, seed: int) -> str:
    """A tiny model with its own random weights, published as version 1 of `base`."""
    from diva_tf.model.network import build_embedding_model

    cfg = tiny_config(seed=seed)
    return export.export_model(build_embedding_model(cfg, cfg.seed), cfg, base, version=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two exports with the same version number (1) and dimension (512), different weights."""
    root = tmp_path_factory.mktemp("models")
    return {name: export_seed(str(root / name / "diva"), seed)
            for name, seed in (("a", 11), ("b", 12))}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_folder_dataset(str(tmp_path_factory.mktemp("gallery")), n_classes=3, per_class=2,
                               size=40)


@pytest.fixture(scope="module")
def built(models, gallery, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("built") / "index")
    return idx.build_index(models["a"], gallery, out, labels_from_folders=True)


@pytest.fixture(scope="module")
def servers(models):
    """`python -m diva_tf.serve` serving model a, and one serving model b (both as version 1)."""
    procs = {name: start_server(os.path.dirname(path)) for name, path in models.items()}
    yield {name: f"{u}/v1/models/diva:predict" for name, (_, u) in procs.items()}
    for proc, _ in procs.values():
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def bad_queries(tmp_path, gallery):
    """A good query (a gallery image), a folder, a text file, a missing file, an empty file."""
    good = os.path.join(gallery, "class_01", "img_1.jpg")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return [good, str(folder), str(notes), str(tmp_path / "missing.jpg"), str(empty)]


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines of a CLI's stderr (TensorFlow's and faiss's start-up chatter aside),
    after checking that no traceback is among it."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def top1(stdout: str) -> list[tuple[str, float, str]]:
    """(query, top-1 score, top-1 path) per query block of `format_hits` output."""
    blocks = re.findall(r"^(\S.*)\n\s+1\. (\S+)\s+\S+\s+(\S+)$", stdout, re.M)
    return [(q, float(s), p) for q, s, p in blocks]


def copy_index(built, dest) -> str:
    shutil.copytree(built.index_dir, dest)
    return str(dest)


def edit_json(path: str, change) -> None:
    with open(path) as f:
        value = change(json.load(f))
    with open(path, "w") as f:
        json.dump(value, f)


# ---- 1. index vs the served model -----------------------------------------------------------
def test_manifest_keeps_a_probe_the_building_model_embeds(built, models):
    probe = built.manifest["probe"]
    png = base64.b64decode(probe["png_b64"])
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (idx.PROBE_SIZE, idx.PROBE_SIZE, 3)
    a, b = (export.load_export(models[n]).embed_bytes([png])[0] for n in "ab")
    np.testing.assert_allclose(probe["embedding"], a, atol=1e-6)
    assert np.abs(a - b).max() > 100 * idx.PROBE_ATOL  # the other weights are far outside


def test_client_refuses_a_server_with_another_model_of_the_same_version(built, servers, gallery):
    query = os.path.join(gallery, "class_02", "img_0.jpg")
    proc = run([PYTHON, CLIENT, "--url", servers["b"], "--index", built.index_dir, query])
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    (line,) = error_lines(proc.stderr)
    assert re.fullmatch(rf"error: index {re.escape(built.index_dir)} was built with another model "
                        r"than the one served as version 1: its probe image embeds \S+ away "
                        r"\(max abs difference, tolerance 0\.001\); serve \S+ or rebuild the "
                        r"index from the served SavedModel", line), line
    # the same index through the server of its own model: the query finds itself
    proc = run([PYTHON, CLIENT, "--url", servers["a"], "--index", built.index_dir, "--k", "2",
                query])
    assert proc.returncode == 0, proc.stderr
    assert top1(proc.stdout) == [(query, 1.0, query)]


def test_client_refuses_an_index_without_probe(built, servers, gallery, tmp_path, capsys):
    old = copy_index(built, tmp_path / "old_index")
    edit_json(os.path.join(old, idx.MANIFEST_FILE),
              lambda manifest: {k: v for k, v in manifest.items() if k != "probe"})
    code = load_client().main(["--url", servers["a"], "--index", old,
                               os.path.join(gallery, "class_00", "img_0.jpg")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (f"error: index {old} has no probe embedding (built by an older diva_tf), so a "
                   "served model cannot be checked against it; rebuild it with `python -m "
                   "diva_tf.index build`\n")


# ---- 4. one line per bad query, the good ones answered ---------------------------------------
def test_client_answers_good_files_and_names_each_bad_one(built, servers, bad_queries, capsys):
    good, folder, notes, missing, empty = bad_queries
    code = load_client().main(["--url", servers["a"], "--index", built.index_dir, "--k", "1",
                               *bad_queries])
    out, err = capsys.readouterr()
    assert code == 2
    assert top1(out) == [(good, 1.0, good)]
    lines = err.splitlines()
    assert lines[0] == f"error: {folder}: Is a directory"
    not_an_image = r"HTTP 400 from \S+: image 0: not a JPEG/PNG/GIF/BMP/WEBP image .*"
    assert re.fullmatch(rf"error: {re.escape(notes)}: {not_an_image}", lines[1]), lines[1]
    assert lines[2] == f"error: {missing}: No such file or directory"
    assert re.fullmatch(rf"error: {re.escape(empty)}: {not_an_image}", lines[3]), lines[3]
    assert len(lines) == 4


def test_client_without_index_answers_good_files(servers, bad_queries, capsys):
    good, folder, notes, missing, empty = bad_queries
    code = load_client().main(["--url", servers["a"], "--values", "2", missing, good, notes])
    out, err = capsys.readouterr()
    assert code == 2
    assert re.fullmatch(rf"{re.escape(good)}: embedding shape \(512,\) \[\S+, \S+, \.\.\.\]\n", out)
    assert [line.split(": ")[1] for line in err.splitlines()] == [missing, notes]


@pytest.mark.parametrize("k", ["0", "-3"])
def test_client_k_must_be_positive(k, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_client().main(["--index", "x", "--k", k, "img.jpg"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: argument --k: {k}: must be at least 1")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_index_search_k_must_be_positive(built, models, gallery, k):
    proc = run([PYTHON, "-m", "diva_tf.index", "search", "--index", built.index_dir,
                "--export_dir", models["a"], f"--k={k}",
                os.path.join(gallery, "class_00", "img_0.jpg")])
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", f"error: --k={k}: must be at least 1\n")


def test_index_search_answers_good_files_and_names_each_bad_one(built, models, bad_queries):
    good, folder, notes, missing, empty = bad_queries
    proc = run([PYTHON, "-m", "diva_tf.index", "search", "--index", built.index_dir,
                "--export_dir", models["a"], "--k", "1", *bad_queries])
    assert proc.returncode == 2
    assert top1(proc.stdout) == [(good, 1.0, good)]
    assert error_lines(proc.stderr) == [
        f"error: {folder}: Is a directory",
        f"error: {notes}: not a decodable image (Unknown image file format. One of JPEG, JPEG XL, "
        "PNG, GIF, BMP, WebP required.)",
        f"error: {missing}: No such file or directory",
        f"error: {empty}: not a decodable image (Input is empty.)"]


def _truncate(path):
    with open(path, "r+") as f:
        f.truncate(os.path.getsize(path) // 2)


BREAKAGES = {  # file -> (how it is broken, the message's tail)
    "truncated manifest": (idx.MANIFEST_FILE, _truncate,
                           r"manifest\.json is not valid JSON \(.*; truncated\?\); rebuild the index"),
    "empty items": (idx.ITEMS_FILE, lambda p: open(p, "w").close(),
                    r"items\.json is not valid JSON \(.*; truncated\?\); rebuild the index"),
    "missing items": (idx.ITEMS_FILE, os.remove,
                      r"cannot read items\.json \(No such file or directory\); rebuild the index"),
    "missing vectors": (idx.INDEX_FILE, os.remove,
                        r"cannot read index\.faiss \(.*\); rebuild the index"),
    "items of another index": (idx.ITEMS_FILE, lambda p: edit_json(p, lambda items: items[:-1]),
                               r"items\.json lists 5 images, index\.faiss holds 6 vectors, "
                               r"manifest\.json names a model: the files do not belong together; "
                               r"rebuild the index"),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_a_broken_index_is_one_clear_error(built, tmp_path, case):
    name, breaks, message = BREAKAGES[case]
    broken = copy_index(built, tmp_path / "index")
    breaks(os.path.join(broken, name))
    with pytest.raises(idx.IndexDataError) as error:
        idx.RetrievalIndex.read(broken)
    assert re.fullmatch(rf"index {re.escape(broken)}: {message}", str(error.value)), error.value
    assert "\n" not in str(error.value)


def test_index_search_cli_truncated_manifest(built, models, gallery, tmp_path):
    broken = copy_index(built, tmp_path / "index")
    _truncate(os.path.join(broken, idx.MANIFEST_FILE))
    proc = run([PYTHON, "-m", "diva_tf.index", "search", "--index", broken, "--export_dir",
                models["a"], os.path.join(gallery, "class_00", "img_0.jpg")])
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = error_lines(proc.stderr)
    assert re.fullmatch(rf"error: index {re.escape(broken)}: manifest\.json is not valid JSON "
                        r"\(.*\); rebuild the index", line), line


def test_a_missing_index_folder(tmp_path):
    with pytest.raises(idx.IndexDataError, match=r"^--index \S+nowhere: no such index folder$"):
        idx.RetrievalIndex.read(str(tmp_path / "nowhere"))


# ---- 2. a killed rebuild keeps the previous index --------------------------------------------
KILLED_BUILD = textwrap.dedent("""
    import json, os, signal, sys
    from diva_tf.serving import index
    point = sys.argv[4]
    real_dump, real_rename = json.dump, os.rename

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def dump(obj, f, **kw):  # killed while items.json is half written
        if point == "items" and isinstance(obj, list):
            f.write("[")
            f.flush()
            die()
        real_dump(obj, f, **kw)

    def rename(src, dst):  # killed between moving the old index aside and renaming the new in
        if point == "swap" and os.path.basename(src).startswith(".tmp-"):
            die()
        real_rename(src, dst)

    json.dump, os.rename = dump, rename
    index.build_index(*sys.argv[1:4])
    print("finished without being killed")
""")


def searchable_as_before(index_dir: str, built) -> None:
    """The index at index_dir holds what `built` held, and each vector finds itself."""
    again = idx.RetrievalIndex.read(index_dir)
    assert again.items == built.items and again.manifest == built.manifest
    vectors = built.index.reconstruct_n(0, built.index.ntotal)
    for row, hits in enumerate(again.search(vectors, 1)):
        assert hits[0].id == row and hits[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("point", ["items", "swap"])
def test_killed_rebuild_keeps_the_previous_index(built, models, gallery, tmp_path, point):
    out = copy_index(built, tmp_path / "index")
    others = make_folder_dataset(str(tmp_path / "others"), n_classes=2, per_class=1)
    proc = run([PYTHON, "-c", KILLED_BUILD, models["b"], others, out, point])
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    leftovers = sorted(n for n in os.listdir(tmp_path) if n.startswith("."))
    searchable_as_before(out, built)  # for "swap", reading puts the aside copy back first
    # the killed writer's lock file too (its lock died with it)
    assert [n.split("-")[0] for n in leftovers] == ([".lock", ".tmp"] if point == "items"
                                                    else [".lock", ".old", ".tmp"])
    kept = leftovers if point == "items" else [n for n in leftovers if n.startswith(".lock")]
    assert sorted(os.listdir(tmp_path)) == [*kept, "index", "others"]
    # the next build removes the dead build's leftovers and swaps the new index in
    new = idx.build_index(models["b"], others, out)
    assert sorted(os.listdir(tmp_path)) == ["index", "others"]
    assert idx.RetrievalIndex.read(out).manifest == new.manifest and new.manifest["count"] == 2


def test_build_refuses_to_replace_a_folder_that_is_not_an_index(models, gallery, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(idx.IndexDataError, match="holds files that are not part of an index "
                                                 r"\(holiday\.jpg\); refusing to replace it"):
        idx.build_index(models["a"], gallery, str(precious))
    assert os.listdir(precious) == ["holiday.jpg"] and sorted(os.listdir(tmp_path)) == ["photos"]


@pytest.mark.parametrize("command", ["build", "add", "remove"])
def test_a_second_writer_of_an_index_is_refused_in_one_line(built, models, gallery, tmp_path,
                                                          command):
    """While one process writes an index folder (held here), `index build/add/remove` on the same
    folder stops at once, exit 2, and leaves the index as it was."""
    from diva_tf.core.atomic import single_writer

    target = copy_index(built, str(tmp_path / "busy"))
    args = {"build": ["--export_dir", models["a"], "--images", gallery, "--out", target],
            "add": ["--index", target, "--export_dir", models["a"], "--images", gallery],
            "remove": ["--index", target, "--ids", "0"]}[command]
    before = open(os.path.join(target, "items.json")).read()
    with single_writer(target, "index"):
        proc = run([PYTHON, "-m", "diva_tf.index", command, *args])
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: {target}: another index writer is at work on it "
                           f"(pid {os.getpid()} on ") and line.endswith("; wait for it to end")
    assert open(os.path.join(target, "items.json")).read() == before
