"""Third-party messages that look like errors stay off the user's screen (issue 26), and nothing
else does."""

import logging
import os
import subprocess
import sys

from diva_tf.core.quiet import InfoFrom, drop_lines, filtered_stderr

ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (b"I0000 00:00:1796420091.005971    3481 port.cc:153] oneDNN custom operations are on. You "
          b"may see slightly different numerical results due to floating-point round-off errors.\n")
REAL = b"E0000 00:00:1796420091.1    3481 cuda_dnn.cc:8] Could not create cudnn handle\n"
NOISE = ["InitializeLog", "oneDNN", "cpu_feature_guard", "Could not load library",
         "ModuleNotFoundError", "GeneratorDatasetOp", "Loading faiss", "shuffle=True"]


def env_without_log_level(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, **extra}


def test_drop_lines_keeps_everything_else():
    text = ABSL_PREAMBLE + ONEDNN + REAL + ABSL_PREAMBLE + b"partial line"
    assert drop_lines(text) == REAL + b"partial line"


def test_filtered_stderr_rewrites_what_it_captured():
    """C++ writes (to file descriptor 2) and Python's, in their order, less the harmless lines."""
    code = ("import os, sys\n"
            "from diva_tf.core.quiet import filtered_stderr\n"
            "print('before', file=sys.stderr)\n"
            "with filtered_stderr():\n"
            f"    os.write(2, {ABSL_PREAMBLE + REAL!r})\n"
            "    print('python line', file=sys.stderr)\n"
            f"    os.write(2, {ONEDNN!r})\n"
            "print('after', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert proc.stderr == b"before\n" + REAL + b"python line\nafter\n"


def test_tensorflow_info_through_absl_is_dropped(tmp_path):
    keep = InfoFrom(str(tmp_path))

    def record(path, level):
        return logging.LogRecord("absl", level, str(path), 1, "Sharding callback duration", (), None)

    assert not keep.filter(record(tmp_path / "saver.py", logging.INFO))
    assert keep.filter(record(tmp_path / "saver.py", logging.WARNING))
    assert keep.filter(record(tmp_path.parent / "diva_tf" / "run.py", logging.INFO))


def test_import_filter_only_below_the_users_log_level():
    code = ("import os, sys\n"
            "from diva_tf.core.quiet import _QuietImport, quiet_third_party\n"
            "quiet_third_party()\n"
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], "
            "any(isinstance(f, _QuietImport) for f in sys.meta_path))\n")

    def run(**env):
        return subprocess.run([sys.executable, "-c", code], env=env_without_log_level(**env),
                              capture_output=True, text=True, check=True).stdout.split()

    assert run() == ["2", "True"]
    assert run(TF_CPP_MIN_LOG_LEVEL="0") == ["0", "False"]  # the user asked for everything
    assert run(TF_CPP_MIN_LOG_LEVEL="1") == ["1", "True"]


def test_entry_point_stderr_is_only_its_error(tmp_path):
    """`index search` imports TensorFlow and faiss before it finds the index missing: its stderr is
    the one error line (before issue 26, 14 lines of TensorFlow and faiss start-up messages came
    first)."""
    missing = tmp_path / "missing"
    proc = subprocess.run(
        [sys.executable, "-m", "diva_tf.index", "search", f"--index={missing}",
         f"--export_dir={missing}", str(tmp_path / "query.png")],
        env=env_without_log_level(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: --index {missing}: no such index folder"]
    assert not [n for n in NOISE if n in proc.stderr + proc.stdout]


def test_plain_formatter_drops_absl_prefix_and_names_warnings():
    from diva_tf.core.quiet import PlainFormatter

    def record(level, msg, *args):
        return logging.LogRecord("absl", level, "x.py", 1, msg, args, None)

    fmt = PlainFormatter()
    assert fmt.format(record(logging.INFO, "emoji train: %d images", 2688)) == "emoji train: 2688 images"
    assert fmt.format(record(logging.WARNING, "%d unreadable", 3)) == "warning: 3 unreadable"
    assert fmt.format(record(logging.ERROR, "bad")) == "error: bad"
