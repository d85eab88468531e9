"""Every command and code block of the project's Markdown documents runs (issue 26).

Each document's blocks run in document order, as a reader following it would, in a workspace of
their own: a copy of the repository's documents, configs/, export/ and benchmarks/ with
- data/emoji: a tiny emoji dataset prepared from fake npm packages (60 emoji x 4 vendors, so the
  README's quickstart command trains in seconds),
- my_images/: a folder of 12 classes x 12 JPEGs (other documents' "your own images"),
and `python` = this interpreter, diva_tf importable from the repository. A document whose first
command trains on a fresh clone (the README) has that training run first, so the sections after it
find its run folder. Blocks annotated `slow`
run alone in a fresh workspace under `pytest -m slow`. Under `-m slow` too, a document with a
`fresh-clone` block (the README's first command) runs as a new user reads it: a fresh clone, that
block verbatim with the machine's python3, then every block after it in order, in the clone with
its venv activated (`install` blocks, which the shared workspace skips, included), on the real
data the first command prepared. `skip` blocks name their reason and are listed by
`test_skipped_blocks_say_why`. Annotations: tests/doc_blocks.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from doc_blocks import Block, blocks
from fixtures_data import emoji_entry, isolated_cache, make_emoji_tarball  # noqa: F401
from synthetic import make_folder_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("README.md", "docs", "configs", "export", "benchmarks")
SKIP_DIRS = {".git", ".venv", "node_modules", "results", "data", "runs"}
BLOCK_TIMEOUT = 900


def documents() -> list[str]:
    """Repository-relative paths of every Markdown file outside outputs and environments."""
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), REPO) for f in files if f.endswith(".md")]
    return sorted(found)


def doc_blocks(path: str) -> list[Block]:
    with open(os.path.join(REPO, path)) as f:
        return blocks(path, f.read())


ALL = {path: doc_blocks(path) for path in documents()}
NOT_IN_WORKSPACE = {"skip", "slow", "fresh-clone", "install"}
SEQUENTIAL = [p for p, bs in ALL.items()
              if any(not (NOT_IN_WORKSPACE & set(b.options)) for b in bs)]
ALONE = [b for bs in ALL.values() for b in bs if "slow" in b.options and "skip" not in b.options]
FRESH = [p for p, bs in ALL.items() if any("fresh-clone" in b.options for b in bs)]


# ---- workspace ------------------------------------------------------------------------------------
def tiny_emoji(out: str, cache: str) -> None:
    from diva_tf.data.emoji_prepare import VENDORS, prepare_emoji

    # The first is named as the real first emoji, whose folder the README's commands use.
    entries = [emoji_entry("grinning" if i == 0 else f"e{i:02d}", i + 1, vendors=VENDORS)
               for i in range(60)]
    for vendor in VENDORS:
        make_emoji_tarball(cache, vendor, entries)
    prepare_emoji(out, VENDORS, 64, cache)


@pytest.fixture(scope="module")
def seed_workspace(tmp_path_factory) -> str:
    """A workspace to copy for each document (its data is made once)."""
    ws = str(tmp_path_factory.mktemp("docs") / "seed")
    os.makedirs(ws)
    for name in COPIED:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(ws, name), ignore=shutil.ignore_patterns(
                "models", "__pycache__", "checkpoints", "tensorboard", "*.weights.h5"))
        elif os.path.exists(src):
            shutil.copy2(src, os.path.join(ws, name))
    tiny_emoji(os.path.join(ws, "data", "emoji"), os.path.join(ws, ".npm_fixture"))
    make_folder_dataset(os.path.join(ws, "my_images"), n_classes=12, per_class=12, size=48)
    return ws


def workspace(seed: str, tmp_path) -> str:
    ws = str(tmp_path / "ws")
    shutil.copytree(seed, ws, symlinks=True)
    return ws


def environment(ws: str) -> dict:
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    python_path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PATH": path, "PYTHONPATH": python_path, "HOME": os.environ["HOME"],
            "DIVA_TF_CACHE_DIR": os.path.join(ws, ".cache")}


# ---- running blocks -------------------------------------------------------------------------------
def command(block: Block, ws: str, n: int) -> list[str]:
    if block.kind == "python":
        script = os.path.join(ws, f".doc_block_{n}.py")
        with open(script, "w") as f:
            f.write(block.code)
        return [sys.executable, script]
    return ["bash", "-euo", "pipefail", "-c", block.code]


def run_block(block: Block, ws: str, env: dict, n: int) -> str:
    proc = subprocess.run(command(block, ws, n), cwd=ws, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{block.where} exited {proc.returncode}:\n{output[-4000:]}"
    if isinstance(block.options.get("expect"), str):
        assert re.search(block.options["expect"], output), \
            f"{block.where}: output does not match {block.options['expect']!r}:\n{output[-4000:]}"
    return output


def start_background(block: Block, ws: str, env: dict, n: int) -> subprocess.Popen:
    """Start the block, then wait (up to 5 minutes) until its URL answers."""
    log = open(os.path.join(ws, f".doc_block_{n}.log"), "w")
    proc = subprocess.Popen(command(block, ws, n), cwd=ws, env=env, stdout=log, stderr=log,
                            start_new_session=True)
    url, deadline = block.options["background"], time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, f"{block.where} ended early:\n{open(log.name).read()[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc
        except OSError:
            time.sleep(1)
    pytest.fail(f"{block.where}: {url} did not answer within 5 minutes")


def run_in_order(doc: list[Block], ws: str, env: dict | None = None) -> None:
    env, background = env or environment(ws), []
    try:
        for n, block in enumerate(doc):
            if "background" in block.options:
                background.append(start_background(block, ws, env, n))
            else:
                run_block(block, ws, env, n)
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def first_run(doc: list[Block]) -> list[Block]:
    """The training part of a document's fresh-clone command (the README's first: install, prepare
    the data, train) as a block of its own, run before the others: the sections after it work on
    the run folder it leaves (here on the workspace's tiny emoji data, already prepared)."""
    found = []
    for b in doc:
        if "fresh-clone" in b.options:
            train = [part.strip().replace(".venv/bin/python", "python", 1)
                     for part in b.code.split("&&") if "diva_tf.train" in part]
            found += [Block(b.path, b.line, "bash", " && ".join(train), {})] if train else []
    return found


@pytest.mark.parametrize("path", SEQUENTIAL)
def test_document_runs(path, seed_workspace, tmp_path):
    """The document's blocks in order, after its first command's training (`first_run`)."""
    run_in_order(first_run(ALL[path])
                 + [b for b in ALL[path] if not NOT_IN_WORKSPACE & set(b.options)],
                 workspace(seed_workspace, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("block", ALONE, ids=[b.where for b in ALONE])
def test_slow_block_runs(block, seed_workspace, tmp_path):
    run_in_order([block], workspace(seed_workspace, tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # install, data, the quickstart and every later section: ~15 min
@pytest.mark.parametrize("path", FRESH)
def test_document_runs_in_a_fresh_clone(path, tmp_path):
    """As a new user: clone the repository, run the fresh-clone block verbatim with the machine's
    python3 (no venv of ours on PATH), then every later block of the document in order with the
    clone's venv activated, as its text says to."""
    clone = str(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", REPO, clone], check=True)
    venv_bin = os.path.dirname(sys.executable)
    path_var = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    doc = [b for b in ALL[path] if not {"skip", "slow"} & set(b.options)]
    first = next(i for i, b in enumerate(doc) if "fresh-clone" in b.options)
    print(run_block(doc[first], clone, {**env, "PATH": path_var}, 0)[-3000:])
    venv = os.path.join(clone, ".venv")
    activated = {**env, "VIRTUAL_ENV": venv,
                 "PATH": os.pathsep.join([os.path.join(venv, "bin"), path_var])}
    run_in_order(doc[first + 1:], clone, activated)


def test_skipped_blocks_say_why():
    skipped = [b for bs in ALL.values() for b in bs if "skip" in b.options]
    for b in skipped:
        assert isinstance(b.options["skip"], str) and b.options["skip"].startswith("("), \
            f"{b.where}: `skip` needs a reason in parentheses"
    print("\n".join(f"skipped {b.where}: {b.options['skip']}" for b in skipped))
