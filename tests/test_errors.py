"""One error hierarchy: every exception class diva_tf defines derives from DivaError, and every
command-line entry point turns one into a single `error: ...` line on stderr and exit status 2."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import pytest

from diva_tf.core.cli import reports_errors
from diva_tf.core.errors import ConfigError, DivaError
from test_layering import MODULES

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": os.pathsep.join(sys.path)}


def test_every_exception_class_of_the_package_derives_from_diva_error():
    defined = {}
    for name in sorted(MODULES):
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                defined[f"{name}.{cls_name}"] = cls
    assert len(defined) >= 10, sorted(defined)
    assert [n for n, cls in defined.items() if not issubclass(cls, DivaError)] == []


def test_the_handler_prints_one_line_and_returns_2(capsys):
    @reports_errors(OSError)
    def main(error):
        raise error

    assert main(ConfigError("--x=1: bad\nuse --x=2")) == 2
    assert main(FileNotFoundError("no such file")) == 2
    assert capsys.readouterr().err == "error: --x=1: bad use --x=2\nerror: no such file\n"
    with pytest.raises(KeyError):  # a bug stays a traceback
        main(KeyError("bug"))


@pytest.mark.parametrize("module, args, message", [
    ("diva_tf.train", ["--backbone=nope"], "--backbone='nope': unknown backbone"),
    ("diva_tf.evaluate", ["--workdir=/nonexistent/run"], "no config at /nonexistent/run"),
    ("diva_tf.export", ["--workdir=/nonexistent/run"], "no config at /nonexistent/run"),
    ("diva_tf.data.prepare", ["glyphs", "--out=/tmp/never", "--fonts=nope"],
     "--fonts: unknown font 'nope'"),
])
def test_each_entry_point_maps_a_diva_error_to_one_line_and_exit_2(module, args, message):
    r = subprocess.run([sys.executable, "-m", module, *args], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {message}") and "Traceback" not in r.stderr, r.stderr


def test_importing_an_entry_point_defines_no_flags():
    code = ("from absl import flags; import diva_tf.train, diva_tf.evaluate, diva_tf.export; "
            "print(sorted(n for n in flags.FLAGS if flags.FLAGS[n].name == n and "
            "n in ('workdir', 'bs', 'export_dir', 'saved_model')))")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
