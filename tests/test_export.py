"""SavedModel export: TF Serving layout, atomic publishing, both signatures, manifest, and
equality with the trained model under the evaluation preprocessing (also in a fresh process)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from diva_tf.core.atomic import owned_tempdir
from diva_tf.runs.run_folder import export_workdir
from diva_tf.serving import export
import export_helpers as helpers
from export_helpers import (METRICS, PROBE, PYTHON, check, make_workdir, run, sample_images,
                            write_files)

WEIGHTS = (0.5, 1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, model, cfg) of a tiny 'trained' run with a metrics log."""
    return make_workdir(str(tmp_path_factory.mktemp("run")), seed=5, metrics=METRICS)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    workdir, _, _ = trained
    base = str(tmp_path_factory.mktemp("models") / "diva")
    return export_workdir(workdir, base, head_weights=WEIGHTS)


def reference(model, cfg, encoded, weights=WEIGHTS):
    return helpers.reference(model, cfg, encoded, weights)


def test_layout_and_manifest(exported, trained):
    workdir, _, cfg = trained
    base = os.path.dirname(exported)
    assert exported == os.path.join(base, "1")
    assert os.listdir(base) == ["1"]  # no temporary folder left behind
    for rel in ("saved_model.pb", "variables/variables.index", "assets/diva_manifest.json"):
        assert os.path.exists(os.path.join(exported, rel)), rel
    m = export.read_manifest(exported)
    assert m["heads"] == list(cfg.diva_features) and m["head_weights"] == list(WEIGHTS)
    assert (m["head_dims"], m["embedding_dim"], m["crop"], m["resize"]) == ([128] * 4, 512, 32, 36)
    assert (m["backbone"], m["dataset"], m["model_version"]) == ("tiny", "folder", 1)
    assert m["diva_tf_version"]
    assert m["metrics"]["epoch"] == 2 and m["metrics"]["scores"]["recall@1"] == 0.42


def test_versions_increment_and_are_never_overwritten(trained, tmp_path):
    _, model, cfg = trained
    base = str(tmp_path / "diva")
    assert export.export_model(model, cfg, base) == os.path.join(base, "1")
    assert export.export_model(model, cfg, base) == os.path.join(base, "2")
    assert export.export_model(model, cfg, base, version=10).endswith("10")
    assert export.list_versions(base) == [1, 2, 10] and export.next_version(base) == 11
    before = export.fingerprint(os.path.join(base, "2"))
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_model(model, cfg, base, version=2)
    assert export.fingerprint(os.path.join(base, "2")) == before
    export.export_model(model, cfg, base, version=2, head_weights=WEIGHTS, overwrite=True)
    assert export.read_manifest(os.path.join(base, "2"))["head_weights"] == list(WEIGHTS)
    assert sorted(os.listdir(base)) == ["1", "10", "2"]


def test_failure_mid_export_publishes_nothing(trained, tmp_path, monkeypatch):
    _, model, cfg = trained
    base = str(tmp_path / "diva")
    export.export_model(model, cfg, base)
    real_build = export.build_archive

    class Crashing:
        def __init__(self, archive):
            self.archive = archive

        def write_out(self, path, **kw):
            self.archive.write_out(path, **kw)  # a complete SavedModel, then the crash
            raise KeyboardInterrupt("killed mid-export")

    monkeypatch.setattr(export, "build_archive", lambda *a: Crashing(real_build(*a)))
    with pytest.raises(KeyboardInterrupt):
        export.export_model(model, cfg, base)
    assert os.listdir(base) == ["1"] and export.list_versions(base) == [1]


def test_every_exported_file_is_readable_by_other_users(trained, tmp_path):
    """TF Serving may run as another user: under umask 022 a version is 0755 folders and 0644
    files (tempfile's folders would be 0700)."""
    _, model, cfg = trained
    old = os.umask(0o022)
    try:
        version = export.export_model(model, cfg, str(tmp_path / "diva"))
    finally:
        os.umask(old)
    paths = [version] + [os.path.join(d, n) for d, dirs, files in os.walk(version)
                         for n in dirs + files]
    modes = {os.path.relpath(p, version): stat.S_IMODE(os.stat(p).st_mode) for p in paths}
    assert len(modes) > 4 and modes == {os.path.relpath(p, version): 0o755 if os.path.isdir(p)
                                        else 0o644 for p in paths}


def test_half_written_folders_are_not_versions(tmp_path):
    base = tmp_path / "diva"
    (base / "3").mkdir(parents=True)  # no saved_model.pb
    (base / ".tmp-4-abc").mkdir()
    assert export.list_versions(str(base)) == [] and export.next_version(str(base)) == 1
    with pytest.raises(export.ExportError, match="neither a SavedModel"):
        export.resolve_saved_model(str(base))


def test_bytes_signature_equals_eval_transform_and_model(exported, trained):
    _, model, cfg = trained
    encoded = list(sample_images().values())  # JPEG + PNG; RGB, grey, RGBA; several sizes
    loaded = export.load_export(os.path.dirname(exported))
    assert loaded.version == 1
    got = loaded.signature()(image_bytes=tf.constant(encoded))
    want = reference(model, cfg, encoded)
    assert set(got) == {"embedding", *cfg.diva_features}
    for name, value in got.items():
        np.testing.assert_allclose(value.numpy(), want[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(got["embedding"], axis=1), 1.0, atol=1e-5)
    images = loaded.signature("serve_images")(images=tf.constant(want["images"]))
    np.testing.assert_allclose(images["embedding"].numpy(), want["embedding"], atol=1e-5)


def test_head_weights_are_baked_in(exported, trained, tmp_path):
    _, model, cfg = trained
    encoded = [sample_images()["rgb.jpg"]]
    uniform = export.load_export(export.export_model(model, cfg, str(tmp_path / "u"), head_weights=(1, 1, 1, 1)))
    weighted = export.load_export(exported)
    a, b = uniform.embed_bytes(encoded), weighted.embed_bytes(encoded)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_allclose(a, reference(model, cfg, encoded, (1, 1, 1, 1))["embedding"], atol=1e-5)


def test_saved_model_cli_lists_both_signatures(exported):
    cli = os.path.join(os.path.dirname(PYTHON), "saved_model_cli")
    out = check(run([cli, "show", "--all", "--dir", exported])).stdout
    assert "signature_def['serving_default']" in out and "signature_def['serve_images']" in out
    assert "inputs['image_bytes']" in out and "DT_STRING" in out
    assert "inputs['images']" in out and "shape: (-1, 32, 32, 3)" in out
    assert "outputs['embedding']" in out and "shape: (-1, 512)" in out


def test_fresh_process_tensorflow_only(exported, trained, tmp_path):
    """tf.saved_model.load, the endpoint, TFSMLayer and a tf.data map, without diva_tf."""
    _, model, cfg = trained
    images = sample_images(seed=1)
    files = write_files(str(tmp_path / "img"), images)
    want = reference(model, cfg, list(images.values()))
    np.save(tmp_path / "images.npy", want["images"])
    out = str(tmp_path / "probe.npz")
    check(run([PYTHON, PROBE, exported, out, *files, "--images", str(tmp_path / "images.npy")]))
    got = np.load(out)
    for key in ("bytes_embedding", "endpoint", "tfsm", "tfdata", "images_embedding"):
        np.testing.assert_allclose(got[key], want["embedding"], atol=1e-5, err_msg=key)
    for head in cfg.diva_features:
        np.testing.assert_allclose(got[f"bytes_{head}"], want[head], atol=1e-5, err_msg=head)


def test_tf_data_pipeline_in_process(exported, tmp_path):
    """The README snippet: map the loaded signature over batches of encoded images."""
    files = write_files(str(tmp_path), sample_images(seed=2))
    loaded = tf.saved_model.load(exported)  # keep it: it owns the variables the signature reads
    serving = loaded.signatures["serving_default"]
    ds = (tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file).batch(2)
          .map(lambda b: serving(image_bytes=b)["embedding"]))
    got = np.concatenate([e.numpy() for e in ds])
    want = serving(image_bytes=tf.constant([open(f, "rb").read() for f in files]))["embedding"]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_run_metrics(trained, tmp_path):
    workdir, _, cfg = trained
    heads = cfg.diva_features
    last = export.run_metrics(workdir, heads, WEIGHTS, "last")
    assert last["epoch"] == 2 and last["selection_key"] == "test/combined[0.5,1,1,1]/recall@1"
    first = export.run_metrics(workdir, heads, (1, 1, 1, 1))  # not logged: first R@1 of the run
    assert first["selection_key"] == "test/discriminative/recall@1" and first["epoch"] == 1
    assert export.run_metrics(str(tmp_path), heads, WEIGHTS) is None


# ---- leftovers of killed exports (issue 25) ---------------------------------------------------
KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from diva_tf.runs.run_folder import export_workdir
    from diva_tf.serving import export
    workdir, base, version, point = sys.argv[1:5]
    # Stands in for an export that died earlier: it must not tidy the other one's leftovers.
    export.clean_stale = lambda *args: []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "write":  # killed once the SavedModel is written, before it is published
        real_build = export.build_archive

        class Dying:
            def __init__(self, archive):
                self.archive = archive

            def write_out(self, path, **kw):
                self.archive.write_out(path, **kw)
                die()

        export.build_archive = lambda *a: Dying(real_build(*a))
    else:  # killed between moving the old version aside and renaming the new one in
        real_rename = os.rename

        def rename(src, dst):
            if os.path.basename(src).startswith(".tmp-"):
                die()
            real_rename(src, dst)

        os.rename = rename
    export_workdir(workdir, base, version=int(version), overwrite=True)
""")


def test_next_export_cleans_dead_exports_leftovers_only(trained, tmp_path):
    workdir, model, cfg = trained
    base = str(tmp_path / "diva")
    v1 = export.export_model(model, cfg, base)
    before = export.fingerprint(v1)
    logs = {point: tmp_path / f"{point}.log" for point in ("write", "swap")}
    for version, point in (("2", "write"), ("1", "swap")):
        with open(logs[point], "w") as log:
            proc = subprocess.run([PYTHON, "-c", KILLED_EXPORT, workdir, base, version, point],
                                  cwd=helpers.REPO, env=helpers.subprocess_env(),
                                  stdout=subprocess.DEVNULL, stderr=log, timeout=120)
        assert proc.returncode == -signal.SIGKILL, logs[point].read_text()
    leftovers = sorted(os.listdir(base))
    assert len(leftovers) == 3 and all(n.startswith(".") for n in leftovers)  # "1" is aside
    os.mkdir(os.path.join(base, ".tmp-4-abc"))  # older naming without the owner: left alone

    v2 = export.export_model(model, cfg, base)
    assert v2 == os.path.join(base, "2")  # version 1 was put back first, so the next is 2
    assert export.fingerprint(v1) == before
    assert sorted(os.listdir(base)) == [".tmp-4-abc", "1", "2"]
    assert [n.split("-")[:2] for n in leftovers] == [[".old", "1"], [".tmp", "1"], [".tmp", "2"]]


def test_a_live_exports_folder_is_kept(tmp_path):
    base = tmp_path / "diva"
    base.mkdir()
    holder = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    name = os.path.basename(owned_tempdir(str(base), "tmp", "5"))
    theirs = base / name.replace(f".{os.getpid()}-", f".{holder.pid}-")
    (base / name).rename(theirs)
    try:
        assert export.clean_stale(str(base)) == [] and theirs.exists()
    finally:
        holder.communicate(b"")
    assert export.clean_stale(str(base)) == [str(theirs)] and os.listdir(base) == []


# ---- a portable manifest (issue 26) -----------------------------------------------------------
def test_manifest_source_has_no_path_of_the_training_machine(exported, trained):
    workdir, _, cfg = trained
    text = open(os.path.join(exported, "assets", export.MANIFEST_FILE)).read()
    assert os.path.dirname(os.path.abspath(workdir)) not in text
    source = json.loads(text)["source"]
    assert source == {"run": os.path.basename(workdir), "workdir": None, "checkpoint": "best",
                      "config": cfg.to_dict()}


def test_run_source_paths(tmp_path, monkeypatch):
    cfg = helpers.tiny_config(data_dir=str(tmp_path / "data" / "birds"), workdir="runs/a")
    cfg = cfg.replace(backbone_weights="/elsewhere/r50.h5")
    monkeypatch.chdir(tmp_path)
    source = export.run_source(str(tmp_path / "runs" / "a"), cfg.to_dict(), "last")
    assert (source["run"], source["workdir"], source["checkpoint"]) == ("a", "runs/a", "last")
    config = source["config"]
    assert (config["data_dir"], config["backbone_weights"], config["workdir"]) == (
        "data/birds", "r50.h5", "runs/a")
    assert {k: v for k, v in config.items() if k not in ("data_dir", "backbone_weights")} == \
        {k: v for k, v in cfg.to_dict().items() if k not in ("data_dir", "backbone_weights")}
