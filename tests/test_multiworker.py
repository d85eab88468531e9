"""Two workers (MultiWorkerMirroredStrategy over loopback, TF_CONFIG as docs/training.md gives it):
they agree with one process on the same global batch, and a worker killed in epoch 2 stops the
other in one line; rerunning both resumes exactly, every worker from the chief's checkpoint."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from test_train_cli import ENV, _flags, _free_ports, _records, folder_data, run_train  # noqa: F401

pytestmark = pytest.mark.slow

# BatchNorm trains (--frozen_bn=false): the case where replica-local statistics would differ from
# one device's. Four steps per epoch leave time to kill a worker inside epoch 2.
MW = {"strategy": "auto", "frozen_bn": "false", "n_epochs": 3, "steps_per_epoch": 4}
# As a user runs it: diva_tf chooses TensorFlow's C++ log level itself.
USER_ENV = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
TERMS = ("train/loss", "train/discriminative", "train/selfsimilarity", "train/shared",
         "train/intra", "train/decorrelation", "test/combined[1,1,1,1]/recall@1",
         "test/discriminative/recall@1")
RUN_FILES = {"config.json", "metrics.jsonl", "best.weights.h5", "last.weights.h5", "checkpoints",
             "tensorboard"}


def start_workers(args) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        env = {**USER_ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                    "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "diva_tf.train", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=600) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process, once it ended."""
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outputs)]


def scratch_folders(workdir: str) -> list[str]:
    """Non-chief scratch folders of this run folder, wherever a worker may have put them."""
    inside = glob.glob(os.path.join(workdir, "*scratch*"))
    outside = glob.glob(os.path.join(tempfile.gettempdir(), "diva_tf_scratch", "*"))
    from diva_tf.training.distribute import scratch_dir

    key = os.path.basename(scratch_dir(workdir)).split("-")[0]
    return inside + [d for d in outside if os.path.basename(d).startswith(key)]


def assert_same_records(got: list, want: list) -> None:
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want] == [0, 1, 2, 3]
    for a, b in zip(got, want):
        for key in TERMS:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)


@pytest.fixture(scope="module")
def uninterrupted(folder_data, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mw") / "reference")
    results = finish(start_workers(_flags(folder_data, workdir, **MW)))
    for code, out, err in results:
        assert code == 0, out + err
    return workdir, results


def test_two_workers_train_as_one_process_on_the_same_global_batch(folder_data, uninterrupted,
                                                                   tmp_path):
    workdir, results = uninterrupted
    assert "2 replica(s)" in results[0][2]
    one = run_train(_flags(folder_data, str(tmp_path / "one"), **{**MW, "strategy": "default"}))
    assert one.returncode == 0, one.stdout + one.stderr
    two = _records(workdir)
    assert_same_records(two, _records(str(tmp_path / "one")))
    # Every replica on every worker holds the same weights and BN statistics after every epoch.
    assert [r["replicas/weight_disagreement"] for r in two[1:]] == [0.0, 0.0, 0.0]
    assert set(os.listdir(workdir)) == RUN_FILES
    assert scratch_folders(workdir) == []


@pytest.mark.parametrize("victim", [0, 1], ids=["chief", "non_chief"])
def test_a_worker_killed_in_epoch_2_stops_the_other_and_the_rerun_resumes_exactly(
        folder_data, uninterrupted, tmp_path, victim):
    workdir = str(tmp_path / "run")
    args = _flags(folder_data, workdir, **MW)
    procs = start_workers(args)
    state = os.path.join(workdir, "checkpoints", "checkpoint")
    deadline = time.time() + 400
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(state) and "ckpt-1" in open(state).read():
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "a worker ended before epoch 2"
    procs[victim].send_signal(signal.SIGKILL)
    survivor = procs[1 - victim]
    code, out, err = finish([survivor], timeout=300)[0]
    procs[victim].wait()
    assert code == 2, out + err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(
        f"error: lost /job:worker/task:{victim} during epoch 2"), err
    assert "rerun the same command on every worker" in err

    results = finish(start_workers(args))
    for code, out, err in results:
        assert code == 0, out + err
        assert "resumed from" in err and "(epoch 1)" in err
    assert_same_records(_records(workdir), _records(uninterrupted[0]))
    assert set(os.listdir(workdir)) == RUN_FILES
    assert scratch_folders(workdir) == []


def test_a_worker_that_cannot_see_the_run_folder_is_refused(folder_data, uninterrupted,
                                                           tmp_path):
    """Worker 1 given another (empty) folder, as when the run folder is on a disk only the chief
    sees: both refuse in one line instead of training a mixed epoch."""
    import shutil

    workdir = str(tmp_path / "resumable")
    shutil.copytree(uninterrupted[0], workdir)
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i, folder in enumerate([workdir, str(tmp_path / "elsewhere")]):
        env = {**USER_ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                    "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "diva_tf.train", *_flags(folder_data, folder, **{**MW, "n_epochs": 4})],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for code, out, err in finish(procs):
        assert code == 2, out + err
        assert err.strip().splitlines()[-1].startswith("error: the workers see different checkpoints"), err
    assert [r["epoch"] for r in _records(workdir)] == [0, 1, 2, 3]
