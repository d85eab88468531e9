"""Atomic writes (diva_tf/core/atomic.py): ordinary permissions under the umask, and a writer
that fails or is killed mid-write leaves the old target whole."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from diva_tf.core import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tree(root) -> dict:
    """{relative path: bytes} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask):
    with atomic.atomic_folder(str(tmp_path / "export" / "1")) as tmp:
        os.mkdir(os.path.join(tmp, "variables"))
        with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
            f.write(b"pb")
    with atomic.atomic_file(str(tmp_path / "metrics.json")) as f:
        f.write("{}")
    with atomic.atomic_path(str(tmp_path / "best.weights.h5")) as tmp:
        assert tmp.endswith(".weights.h5")
        open(tmp, "wb").close()
    folder, file = 0o777 & ~umask, 0o666 & ~umask
    assert mode(tmp_path / "export" / "1") == folder
    assert mode(tmp_path / "export" / "1" / "variables") == folder
    assert mode(tmp_path / "export" / "1" / "saved_model.pb") == file
    assert mode(tmp_path / "metrics.json") == file
    assert mode(tmp_path / "best.weights.h5") == file
    if umask == 0o022:
        assert (mode(tmp_path / "export" / "1"), mode(tmp_path / "metrics.json")) == (0o755, 0o644)


def test_a_file_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = str(tmp_path / "results.json")
    with atomic.atomic_file(path) as f:
        f.write("old")
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_file(path) as f:
            f.write("half of the new")
            f.flush()
            1 / 0
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["results.json"]
    with atomic.atomic_file(path, "wb") as f:
        f.write(b"new")
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["results.json"]


def write_folder(path, content: str, fail: bool = False) -> None:
    with atomic.atomic_folder(path) as tmp:
        for name in "ab":
            open(os.path.join(tmp, name), "w").write(content)
            if fail:
                raise RuntimeError("killed halfway")


def test_a_folder_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = str(tmp_path / "index")
    write_folder(path, "old")
    with pytest.raises(RuntimeError):
        write_folder(path, "new", fail=True)
    assert tree(path) == {"a": b"old", "b": b"old"} and os.listdir(tmp_path) == ["index"]
    write_folder(path, "new")
    assert tree(path) == {"a": b"new", "b": b"new"} and os.listdir(tmp_path) == ["index"]


def test_an_existing_folder_is_kept_unless_replace(tmp_path):
    path = tmp_path / "3"
    path.mkdir()
    (path / "kept").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic.atomic_folder(str(path), replace=False) as tmp:
            open(os.path.join(tmp, "new"), "w").close()
    assert tree(path) == {"kept": b"x"} and os.listdir(tmp_path) == ["3"]


# A writer killed (SIGKILL: no cleanup runs) halfway through the new content, or between the two
# renames of a folder swap (the old folder already moved aside).
KILLED = """
import os, signal, sys
from diva_tf.core import atomic
kind, path, point = sys.argv[1:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "swap":  # killed after the old folder is moved aside, before the new one moves in
    rename = os.rename
    os.rename = lambda src, dst: die() if os.path.basename(src).startswith(".tmp-") else rename(src, dst)
if kind == "file":
    with atomic.atomic_file(path) as f:
        f.write("half of the new")
        f.flush()
        die()
with atomic.atomic_folder(path) as tmp:
    open(os.path.join(tmp, "a"), "w").write("new")
    if point == "write":
        die()
"""


@pytest.mark.parametrize("kind, point", [("file", "write"), ("folder", "write"),
                                         ("folder", "swap")])
def test_a_killed_writer_leaves_the_old_target_and_the_next_writer_cleans_up(tmp_path, kind,
                                                                             point):
    path = str(tmp_path / ("results.json" if kind == "file" else "index"))
    if kind == "file":
        with atomic.atomic_file(path) as f:
            f.write("old")
    else:
        with atomic.atomic_folder(path) as tmp:
            open(os.path.join(tmp, "a"), "w").write("old")
    proc = subprocess.run([sys.executable, "-c", KILLED, kind, path, point], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = sorted(n for n in os.listdir(tmp_path) if n.startswith("."))
    assert [n.split("-")[0] for n in leftovers] == ([".old", ".tmp"] if point == "swap"
                                                    else [".tmp"])
    old = "old" if kind == "file" else {"a": b"old"}
    if point == "swap":  # the old folder is aside: clean_stale (the next writer) puts it back
        assert not os.path.exists(path)
    else:
        assert (open(path).read() if kind == "file" else tree(path)) == old
    assert len(atomic.clean_stale(str(tmp_path))) == len(leftovers)
    assert (open(path).read() if kind == "file" else tree(path)) == old
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_a_killed_writers_file_is_cleaned_by_the_next_write(tmp_path):
    path = str(tmp_path / "results.json")
    proc = subprocess.run([sys.executable, "-c", KILLED, "file", path, "write"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (leftover,) = os.listdir(tmp_path)
    assert leftover.startswith(".tmp-results.json-") and leftover.endswith(".json")
    with atomic.atomic_file(path) as f:
        f.write("new")
    assert os.listdir(tmp_path) == ["results.json"] and open(path).read() == "new"


def test_a_live_writers_sibling_and_other_names_are_left_alone(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        mine = os.path.basename(atomic.owned_tempdir(str(tmp_path), "tmp", "a.json"))
        theirs = mine.replace(f".{os.getpid()}-", f".{holder.pid}-")
        os.rename(tmp_path / mine, tmp_path / theirs)
        (tmp_path / ".tmp-a.json").write_text("not owned")
        with atomic.atomic_file(str(tmp_path / "a.json")) as f:
            f.write("x")
        assert sorted(os.listdir(tmp_path)) == sorted([".tmp-a.json", theirs, "a.json"])
    finally:
        holder.communicate(b"")
    assert atomic.clean_stale(str(tmp_path)) == [str(tmp_path / theirs)]


def test_single_writer_refuses_a_second_writer_and_frees_the_target_after(tmp_path):
    from diva_tf.core.errors import ConfigError

    target = str(tmp_path / "index")
    lock = tmp_path / ".lock-index"
    with atomic.single_writer(target, "index"):
        assert lock.is_file()
        with pytest.raises(ConfigError, match=rf"another index writer is at work on it "
                                              rf"\(pid {os.getpid()} on "):
            with atomic.single_writer(target, "index"):
                pass
    assert not lock.exists()
    with atomic.single_writer(target, "index"):  # free again
        assert lock.is_file()
