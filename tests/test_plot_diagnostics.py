"""benchmarks/plot_diagnostics.py: per-run summary (best validation epoch per embedding) on a
hand-written metrics.jsonl, and the PNG it draws."""

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "plot_diagnostics.py")
_spec = importlib.util.spec_from_file_location("plot_diagnostics", _PATH)
plot_diagnostics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_diagnostics)


def _write_run(path, records):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_summary_and_png(tmp_path):
    records = [
        {"epoch": 0, "val/disc/recall@1": 0.9, "test/disc/recall@1": 0.9},
        {"epoch": 1, "val/disc/recall@1": 0.5, "test/disc/recall@1": 0.4, "train/loss": 2.0,
         "train/dance_positive_logit": 90.0, "train/dance_zero_loss_fraction": 1.0},
        {"epoch": 2, "val/disc/recall@1": 0.7, "train/loss": 1.0, "beta_mean/disc": 1.1,
         "train/correlation_ssl_disc": 5e-5},
        {"epoch": 3, "val/disc/recall@1": 0.7, "test/disc/recall@1": 0.6, "train/loss": 0.5},
    ]
    run = str(tmp_path / "run")
    _write_run(run, records)
    got = plot_diagnostics.summarise(plot_diagnostics.read_records(run))
    # epoch 0 (untrained) never counts; the tie between epochs 2 and 3 goes to the earlier one,
    # and a record without test metrics reports None rather than another epoch's value.
    assert got["best_val"]["disc"] == {"epoch": 2, "val_recall@1": 0.7, "test_recall@1": None}
    assert got["epochs"] == 3 and got["last"] == {"train/loss": 0.5}
    assert got["selected"] == {"embedding": "disc", "epoch": 2, "val_recall@1": 0.7, "test_recall@1": None,
                               "val_mean_after_epoch10": None, "last_test_recall@1": 0.6}
    later = records + [{"epoch": 11, "val/disc/recall@1": 0.6},
                       {"epoch": 12, "val/disc/recall@1": 0.8, "test/disc/recall@1": 0.55}]
    sel = plot_diagnostics.summarise(later)["selected"]
    assert sel["epoch"] == 12 and sel["val_mean_after_epoch10"] == pytest.approx(0.7)
    assert sel["last_test_recall@1"] == 0.55
    two = {"epoch": 1, "val/combined[1,1]/recall@1": 0.6, "test/combined[1,1]/recall@1": 0.5,
           "val/combined[1,0.5]/recall@1": 0.8, "test/combined[1,0.5]/recall@1": 0.4,
           "val/a/recall@1": 0.9, "test/a/recall@1": 0.9}
    sel = plot_diagnostics.summarise([{"epoch": 0}, two])["selected"]
    assert (sel["embedding"], sel["test_recall@1"]) == ("combined[1,0.5]", 0.4)  # heads alone: not candidates
    assert plot_diagnostics.table({"r": {"epochs": 1, "selected": sel}}).splitlines()[-1] == \
        "| r | 1 | combined[1,0.5] | 1 | 80.00 | 40.00 | – | 40.00 |"
    out = str(tmp_path / "plot.png")
    assert plot_diagnostics.main(["--runs", run, "--out", out, "--summary", str(tmp_path / "s.json")]) == 0
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        plot_diagnostics.read_records(str(tmp_path / "missing"))
