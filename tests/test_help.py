"""`--help` / `--helpshort` of the command-line tools (issue 26): a usage, then one line per flag
that matters with its default and help, then where the rest is; exit code 0."""

import dataclasses
import subprocess
import sys

import pytest

from diva_tf.config import Config
from diva_tf.config.flags import first_sentence
from diva_tf.core.errors import ConfigError

TRAIN_FLAGS = ["dataset", "data_dir", "workdir", "backbone", "backbone_weights", "n_epochs", "bs",
               "lr", "diva_features", "val_classes_fraction", "eval_every"]


def help_of(module: str, flag: str = "--help") -> str:
    proc = subprocess.run([sys.executable, "-m", module, flag], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def flag_line(text: str, name: str) -> str:
    lines = [l for l in text.splitlines() if l.startswith(f"  --{name}=")]
    assert len(lines) == 1, (name, text)
    return lines[0]


def test_first_sentence():
    assert first_sentence("Cut here. Not this.") == "Cut here."
    assert first_sentence("A list, e.g. '0.5,1'; i.e. weights. Then more.") == \
        "A list, e.g. '0.5,1'; i.e. weights."
    assert first_sentence("no full stop") == "no full stop"


@pytest.mark.parametrize("flag", ["--help", "--helpshort"])
def test_train_help_lists_the_flags_that_matter(flag):
    text = help_of("diva_tf.train", flag)
    assert "usage: python -m diva_tf.train --flagfile=configs/<name>.flags" in text
    assert "--helpfull" in text.splitlines()[-1]
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for name in TRAIN_FLAGS:
        field = fields[name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        line = flag_line(text, name)
        assert line.startswith(f"  --{name}={shown} ")
        assert field.metadata["help"].split(". ")[0] in line


@pytest.mark.parametrize("module, expected", [
    ("diva_tf.evaluate", {"workdir": "Training run folder", "export_dir": "Exported SavedModel",
                          "classes=test": "every class of the dataset",
                          "data_dir": "Dataset folder"}),
    ("diva_tf.index", {"export_dir=export/models/diva": "Export version folder",
                       "images": "build, add: folder of images", "index": "search, add, remove: index folder",
                       "k=5": "search: neighbours per query."}),
])
def test_tool_help_lists_its_flags(module, expected):
    text = help_of(module)
    assert f"python -m {module}" in text and "--helpfull" in text
    for flag, words in expected.items():
        assert words in flag_line(text, flag.split("=")[0]), flag
        assert flag_line(text, flag.split("=")[0]).startswith(f"  --{flag}")


@pytest.mark.slow  # both import TensorFlow at start-up
@pytest.mark.parametrize("module, expected", [
    ("diva_tf.export", {"workdir": "Training run folder", "overwrite=false": "Replace an existing"}),
    ("diva_tf.serve", {"port=8501": "REST port", "model_name=diva": "Name in the"}),
])
def test_tensorflow_tool_help_lists_its_flags(module, expected):
    test_tool_help_lists_its_flags(module, expected)


ENTRY_POINTS = ["diva_tf.train", "diva_tf.evaluate", "diva_tf.export", "diva_tf.index",
                "diva_tf.serve"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_does_not_import_tensorflow(module):
    """--help answers before TensorFlow (seconds to import) is loaded, in every entry point."""
    code = ("import runpy, sys\nsys.argv = [%r, '--help']\ntry:\n    runpy.run_module(%r, "
            "run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n") % (module, module)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_an_unknown_flag_is_one_line_and_exit_2(module):
    proc = subprocess.run([sys.executable, "-m", module, "--no_such_flag=1"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: Unknown command line flag 'no_such_flag' (--help lists the flags)"]


def test_a_renamed_flag_still_works_and_says_its_new_name():
    from absl import flags

    from diva_tf.core.cli import define_renamed, renamed_warnings

    fv = flags.FlagValues()
    flags.DEFINE_string("export_dir", "default", "new name", flag_values=fv)
    define_renamed("saved_model", "export_dir", flag_values=fv)
    fv(["prog", "--saved_model=old/path"])
    assert fv.export_dir == "old/path"
    assert renamed_warnings(fv) == ["warning: --saved_model is renamed --export_dir; the old "
                                    "name goes away in the next release"]
    fv.unparse_flags()
    fv(["prog", "--export_dir=new/path"])
    assert fv.export_dir == "new/path" and renamed_warnings(fv) == []
    fv.unparse_flags()
    fv(["prog", "--saved_model=a", "--export_dir=b"])
    with pytest.raises(ConfigError, match="--saved_model is the old name of --export_dir"):
        renamed_warnings(fv)


def test_a_renamed_keyword_still_works_with_a_deprecation_warning():
    from diva_tf.core.renamed import renamed_keywords

    @renamed_keywords(saved_model="export_dir")
    def load(export_dir, k=1):
        return export_dir, k

    assert load("new", k=2) == load(export_dir="new", k=2) == ("new", 2)
    with pytest.warns(DeprecationWarning, match=r"load\(saved_model=...\) is renamed export_dir="):
        assert load(saved_model="old", k=3) == ("old", 3)
    with pytest.raises(TypeError, match="saved_model is the old name of export_dir"):
        load(saved_model="a", export_dir="b")


@pytest.mark.parametrize("name, renamed", [
    ("load_export", {"saved_model": "export_dir"}),
    ("evaluate_export", {"saved_model": "export_dir", "seed": "kmeans_seed"}),
    ("evaluate_run", {"seed": "kmeans_seed"}),
    ("build_index", {"saved_model": "export_dir", "seed": "sample_seed"}),
    ("add_images", {"saved_model": "export_dir"}),
    ("search_images", {"saved_model": "export_dir"}),
])
def test_the_python_api_uses_the_flag_names_and_accepts_the_old_ones(name, renamed):
    """Each old keyword maps to a parameter the function has (evaluate_run/evaluate_export hand
    kmeans_seed on to `run`), and the old name is no parameter any more."""
    import inspect

    import diva_tf
    from diva_tf.runs.evaluate import run

    fn = getattr(diva_tf, name)
    params = set(inspect.signature(fn).parameters) | set(inspect.signature(run).parameters)
    for old, new in renamed.items():
        assert new in params and old not in params
        with pytest.raises(TypeError, match=f"{old} is the old name of {new}"):
            fn(**{old: 1, new: 1})


@pytest.mark.parametrize("module, old, new", [
    ("diva_tf.evaluate", "--seed=3", "--kmeans_seed"),
    ("diva_tf.evaluate", "--batch_size=8", "--eval_batch_size"),
    ("diva_tf.index", "--saved_model=nowhere", "--export_dir"),
    ("diva_tf.index", "--seed=3", "--sample_seed"),
])
def test_old_flag_names_warn_once_then_run(module, old, new, tmp_path):
    """The old name reaches the command (it fails later, on the missing run or index, not on
    the flag)."""
    args = (["--workdir", str(tmp_path / "no_run")] if module.endswith("evaluate")
            else ["search", "--index", str(tmp_path / "no_index"), str(tmp_path / "q.png")])
    proc = subprocess.run([sys.executable, "-m", module, old, *args], capture_output=True,
                          text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    name = old.split("=")[0]
    assert proc.returncode == 2 and lines[0] == (
        f"warning: {name} is renamed {new}; the old name goes away in the next release"), lines
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
