"""`python -m diva_tf.train` end to end: outputs, exact resume after SIGKILL (several workers:
test_multiworker.py)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from synthetic import make_folder_dataset

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_DETERMINISTIC_OPS": "1",
       "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(sys.path)}


def _flags(data_dir, workdir, **over):
    flags = {
        "dataset": "folder", "data_dir": data_dir, "workdir": workdir, "backbone": "tiny",
        "backbone_weights": "none", "resize": 36, "crop": 32, "bs": 16, "embed_dim": 16,
        "diva_decorrnet_dim": 32, "diva_moco_n_key_batches": 2, "diva_rho_decorrelation": "10,10,10",
        "lr": 1e-3, "n_epochs": 3, "steps_per_epoch": 3, "eval_every": 1, "seed": 0,
        "strategy": "default", "eval_batch_size": 32,
    }
    flags.update(over)
    return [f"--{k}={v}" for k, v in flags.items()]


def _train(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "diva_tf.train", *args], env=kw.pop("env", ENV),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def run_train(args):
    """`python -m diva_tf.train args` to its end (stdout and stderr apart)."""
    return subprocess.run([sys.executable, "-m", "diva_tf.train", *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    return make_folder_dataset(str(tmp_path_factory.mktemp("data") / "shapes"), n_classes=12,
                               per_class=6)


@pytest.fixture(scope="module")
def full_run(folder_data, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "full")
    p = _train(_flags(folder_data, workdir))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return workdir, out


def test_run_writes_everything_a_user_needs(full_run):
    workdir, out = full_run
    for name in ("config.json", "metrics.jsonl", "best.weights.h5", "last.weights.h5"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert os.path.exists(os.path.join(workdir, "checkpoints", "checkpoint"))
    recs = _records(workdir)
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]
    for r in recs[1:]:
        for term in ("loss", "discriminative", "selfsimilarity", "shared", "intra", "decorrelation"):
            assert np.isfinite(r[f"train/{term}"])
        assert r["images_per_s"] > 0 and r["lr"] == pytest.approx(1e-3)
        assert any(k.endswith("/recall@1") for k in r)
    assert "img/s" in out


def test_saved_weights_reload_through_workdir(full_run):
    import tensorflow as tf

    from diva_tf.runs.run_folder import load_model

    workdir, _ = full_run
    model, cfg = load_model(workdir, "last")
    x = tf.random.stateless_uniform((2, 32, 32, 3), [0, 1], maxval=255.0)
    out = model(x)
    assert set(out) == set(cfg.diva_features)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(folder_data, full_run, tmp_path):
    """Kill after the first checkpoint; the rerun continues the same loss curve, no epoch lost."""
    workdir = str(tmp_path / "killed")
    args = _flags(folder_data, workdir)
    p = _train(args)
    # The manager's state file names a checkpoint only once it is complete (ckpt-1.index alone
    # is not: a kill between the two leaves a run that rightly starts again from epoch 0).
    state = os.path.join(workdir, "checkpoints", "checkpoint")
    deadline = time.time() + 300
    while not os.path.exists(state) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "run ended before it could be killed"
    # Frozen (it keeps its workdir lock), the run refuses a second identical command at once.
    p.send_signal(signal.SIGSTOP)
    second = _train(args)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 2, out
    assert out.startswith(f"error: --workdir={workdir} is in use by another training run (pid {p.pid} on ")
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = _train(args)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "resumed from" in out
    resumed, full = _records(workdir), _records(full_run[0])
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(resumed, full):
        for key in ("train/loss", "train/discriminative", "train/selfsimilarity", "test/combined[1,1,1,1]/recall@1"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["epoch"], key)


def test_extending_a_run_resumes_under_the_default_mirrored_strategy(folder_data, full_run, tmp_path):
    """The default strategy (auto: MirroredStrategy) holds the run state in mirrored variables;
    rerunning with more epochs (and test evaluation only on validation gains) continues the run:
    its epochs are those of the same run trained in one go."""
    workdir = str(tmp_path / "extended")
    first = _train(_flags(folder_data, workdir, strategy="auto", n_epochs=2, val_classes_fraction=0.25))
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    again = _train(_flags(folder_data, workdir, strategy="auto", n_epochs=3, val_classes_fraction=0.25,
                          eval_test="val_improved"))
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "resumed from" in out and "(epoch 2)" in out
    assert [r["epoch"] for r in _records(workdir)] == [0, 1, 2, 3]
    assert "test/combined[1,1,1,1]/recall@1" in _records(workdir)[-1]  # always at the last epoch


def test_other_flags_on_an_existing_workdir_are_refused(folder_data, full_run):
    p = _train(_flags(folder_data, full_run[0], lr=0.5))
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "--lr" in out and "new --workdir" in out


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_a_rerun_before_the_first_checkpoint_logs_epoch_0_once(folder_data, full_run, tmp_path):
    """A run killed before its first checkpoint has written only epoch 0's record: the rerun starts
    over and logs every epoch once, with the numbers of a run never interrupted."""
    workdir = str(tmp_path / "early")
    os.makedirs(workdir)
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(os.path.join(full_run[0], name), workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps(_records(full_run[0])[0]) + "\n")
    p = run_train(_flags(folder_data, workdir))
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["epoch"] for r in _records(workdir)] == [0, 1, 2, 3]
    for a, b in zip(_records(workdir)[1:], _records(full_run[0])[1:]):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["flipped_byte", "truncated"])
@pytest.mark.parametrize("part", ["data-00000-of-00001", "index"])
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(folder_data, full_run, tmp_path,
                                                                 damage, part):
    workdir = str(tmp_path / "damaged")
    shutil.copytree(full_run[0], workdir)
    damage(os.path.join(workdir, "checkpoints", f"ckpt-3.{part}"))
    p = run_train(_flags(folder_data, workdir))
    assert p.returncode == 0, p.stdout + p.stderr
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "ckpt-3 cannot be read" in warnings[0], p.stderr
    assert "resuming from ckpt-2" in warnings[0]
    assert "Traceback" not in p.stderr
    # Set aside, not deleted; epoch 3 trained again equals the original epoch 3.
    assert os.path.exists(os.path.join(workdir, "checkpoints", "damaged", f"ckpt-3.{part}"))
    resumed, full = _records(workdir), _records(full_run[0])
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    assert resumed[3]["train/loss"] == pytest.approx(full[3]["train/loss"], rel=1e-5)


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_in_one_line(folder_data, full_run,
                                                                         tmp_path):
    workdir = str(tmp_path / "ruined")
    shutil.copytree(full_run[0], workdir)
    for index in glob.glob(os.path.join(workdir, "checkpoints", "*.index")):
        _truncate(index)
    p = run_train(_flags(folder_data, workdir))
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(
        f"error: no checkpoint in {os.path.join(workdir, 'checkpoints')} can be read"), p.stderr
    assert "Traceback" not in p.stderr
    assert len(glob.glob(os.path.join(workdir, "checkpoints", "*.index"))) == 3  # nothing moved


def _one_line_error(args: list, module: str) -> str:
    p = subprocess.run([sys.executable, "-m", module, *args], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return p.stderr.strip().splitlines()[-1]


def test_a_garbage_config_json_is_one_line_in_train_and_evaluate(folder_data, full_run, tmp_path):
    workdir = str(tmp_path / "garbage")
    shutil.copytree(full_run[0], workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write('{"lr": 0.001, "bs"')
    line = _one_line_error(_flags(folder_data, workdir), "diva_tf.train")
    assert line.startswith(f"error: {os.path.join(workdir, 'config.json')} is not a diva_tf config")
    line = _one_line_error([f"--workdir={workdir}"], "diva_tf.evaluate")
    assert "config.json is not a diva_tf config" in line


def test_truncated_weights_are_one_line_in_evaluate_and_export(full_run, tmp_path):
    workdir = str(tmp_path / "truncated")
    shutil.copytree(full_run[0], workdir)
    _truncate(os.path.join(workdir, "best.weights.h5"))
    line = _one_line_error([f"--workdir={workdir}"], "diva_tf.evaluate")
    assert "best.weights.h5 cannot be read" in line, line
    line = _one_line_error([f"--workdir={workdir}", f"--export_dir={tmp_path / 'export'}"],
                           "diva_tf.export")
    assert "best.weights.h5 cannot be read" in line, line
