"""Keep third-party start-up messages that look like errors, but are not, off the user's screen.

Every entry point calls `quiet_third_party()` first thing, before TensorFlow is imported:

- TensorFlow's C++ INFO and WARNING lines (cpu_feature_guard, "GeneratorDatasetOp ... will not be
  optimized"): TF_CPP_MIN_LOG_LEVEL=2, unless the user set it (its errors still show). In a
  multi-worker run (TF_CONFIG names several tasks) 3: a lost peer makes every collective op log
  its abort in C++ before the error reaches diva_tf, which reports it in one line.
- Two lines TensorFlow 2.21 prints while it is imported whatever TF_CPP_MIN_LOG_LEVEL says (absl's
  "All log messages before absl::InitializeLog() ..." and the oneDNN INFO notice): dropped from
  what the import writes to stderr, every other line of it is written through; not done at
  TF_CPP_MIN_LOG_LEVEL=0, which shows everything.
- faiss's loader, which reports at INFO each optimized build it does not find ("Could not load
  library with AVX2 support due to: ModuleNotFoundError") before loading the generic one, and
  TensorFlow's Python INFO notes (SavedModel assets and fingerprint, checkpoint sharding, the
  devices of a strategy), logged through the "tensorflow" logger or absl's: WARNING and above only.
- diva_tf's own log lines: the message alone (`warning: ` / `error: ` before those), not absl's
  developer prefix of level, date, time, thread id and source line.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile

from absl import logging as absl_logging

TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LOGGERS = ("faiss.loader", "tensorflow")
# Lines TensorFlow's import writes to stderr that are not errors (narrow: the exact messages).
HARMLESS_IMPORT_LINES = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written "
               rb"to STDERR\s*$"),
    re.compile(rb"port\.cc:\d+\] oneDNN custom operations are on\. "),
)


def quiet_third_party() -> None:
    """Apply the settings of the module docstring (idempotent); call before TensorFlow's import."""
    absl = absl_logging.get_absl_logger()
    if not any(isinstance(f, InfoFrom) for f in absl.filters):
        tensorflow = importlib.util.find_spec("tensorflow")  # its folder, without importing it
        if tensorflow is not None and tensorflow.submodule_search_locations:
            absl.addFilter(InfoFrom(tensorflow.submodule_search_locations[0]))
    os.environ.setdefault(TF_LOG_LEVEL, "3" if _cluster_tasks() > 1 else "2")
    if (os.environ[TF_LOG_LEVEL].strip() not in ("", "0") and "tensorflow" not in sys.modules
            and not any(isinstance(f, _QuietImport) for f in sys.meta_path)):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    absl_logging.get_absl_handler().setFormatter(PlainFormatter())


def _cluster_tasks() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
        return sum(len(v) for v in cluster.values() if isinstance(v, list))
    except (ValueError, AttributeError):
        return 0


class PlainFormatter(logging.Formatter):
    """'message' for INFO and below, 'warning: message' / 'error: message' above."""

    def format(self, record) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


class InfoFrom(logging.Filter):
    """Drops the records below WARNING logged from the source files under `folder`."""

    def __init__(self, folder: str):
        super().__init__()
        self.prefix = os.path.join(os.path.realpath(folder), "")

    def filter(self, record) -> bool:
        return (record.levelno >= logging.WARNING
                or not os.path.realpath(record.pathname).startswith(self.prefix))


def drop_lines(text: bytes, patterns=HARMLESS_IMPORT_LINES) -> bytes:
    """`text` without the lines that match one of `patterns`."""
    return b"".join(line for line in text.splitlines(keepends=True)
                    if not any(p.search(line) for p in patterns))


@contextlib.contextmanager
def filtered_stderr(patterns=HARMLESS_IMPORT_LINES):
    """Capture file descriptor 2 (C++ and Python writes alike) for the block, then write what was
    captured back to it without the lines matching `patterns`."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            os.write(2, drop_lines(captured.read(), patterns))


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds one top-level package with the other finders and runs its import with
    `filtered_stderr`; removes itself once used."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    """The real loader, executing the module inside `filtered_stderr`; afterwards the module
    names the real loader again."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            with filtered_stderr():
                self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self.loader
