"""One writer per --workdir: a second training command on a busy workdir is refused at once naming
the holder; a holder killed with SIGKILL leaves nothing stuck; a file as --workdir is one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from test_train_cli import ENV, _flags, _records, folder_data, run_train  # noqa: F401 (fixture)

HOLD = ("import sys, time\n"
        "from diva_tf.training.workdir import WorkdirLock\n"
        "with WorkdirLock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of tmp_path/run (it prints 'locked' once it has it)."""
    workdir = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "-c", HOLD, workdir], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "locked\n", p.stderr.read()
    yield p, workdir
    if p.poll() is None:
        p.kill()
        p.wait()


def test_a_second_writer_is_refused_naming_the_holder(folder_data, holder):
    p, workdir = holder
    r = run_train(_flags(folder_data, workdir, n_epochs=1, steps_per_epoch=2))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --workdir={workdir} is in use by another "
                                                   f"training run (pid {p.pid} on {socket.gethostname()}, "
                                                   "started "), r.stderr
    assert f"command: {sys.executable} -c " in lines[0]
    assert lines[0].endswith("); wait for it to end or use another --workdir")
    assert sorted(os.listdir(workdir)) == [".lock"]  # nothing read, nothing written
    # The lock is checked before the data: a missing data folder still gets the lock's message.
    r = run_train(_flags(str(os.path.join(workdir, "no_data")), workdir))
    assert r.returncode == 2 and r.stderr.startswith(f"error: --workdir={workdir} is in use"), r.stderr


def test_the_holder_info_is_in_the_lock_file(holder):
    p, workdir = holder
    with open(os.path.join(workdir, ".lock")) as f:
        info = json.load(f)
    assert (info["pid"], info["host"]) == (p.pid, socket.gethostname())
    assert info["command"].startswith(f"{sys.executable} -c ")


def test_a_lock_left_by_sigkill_does_not_block_the_next_run(folder_data, holder):
    p, workdir = holder
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.exists(os.path.join(workdir, ".lock"))  # stale file, but no holder
    r = run_train(_flags(folder_data, workdir, n_epochs=1, steps_per_epoch=2))
    assert r.returncode == 0, r.stderr
    assert [rec["epoch"] for rec in _records(workdir)] == [0, 1]
    assert not os.path.exists(os.path.join(workdir, ".lock"))  # released and removed at exit


def test_a_second_holder_is_refused_and_only_a_folder_the_lock_created_is_removed(tmp_path):
    from diva_tf.config import ConfigError
    from diva_tf.training.workdir import WorkdirLock

    fresh = str(tmp_path / "fresh")
    with WorkdirLock(fresh):
        with pytest.raises(ConfigError, match=f"--workdir={fresh} is in use by another training "
                                              f"run \\(pid {os.getpid()} on "):
            with WorkdirLock(fresh):
                pass
    assert not os.path.exists(fresh)  # created for nothing: removed again
    existing = tmp_path / "existing"
    existing.mkdir()
    with WorkdirLock(str(existing)):
        (existing / "config.json").write_text("{}")
    assert sorted(os.listdir(existing)) == ["config.json"]
    with WorkdirLock(str(existing)):
        pass
    assert sorted(os.listdir(existing)) == ["config.json"]


@pytest.mark.parametrize("inside", [False, True])
def test_a_file_as_workdir_is_one_line(folder_data, tmp_path, inside):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    workdir = str(path / "run") if inside else str(path)
    r = run_train(_flags(folder_data, workdir))
    assert r.returncode == 2
    want = (f"error: --workdir={workdir}: cannot create the folder (Not a directory)\n" if inside
            else f"error: --workdir={workdir} is a file, not a folder\n")
    assert r.stderr == want
    assert path.read_text() == "keep me"
