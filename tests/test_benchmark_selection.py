"""benchmarks/diva_vs_baseline.py: model selection on validation only, paired differences, and the
README block it writes (hand-worked examples)."""

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "diva_vs_baseline.py")
_spec = importlib.util.spec_from_file_location("diva_vs_baseline", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _record(epoch, **scores):
    """scores: {embedding: (val R@1, test R@1)}."""
    r = {"epoch": epoch}
    for emb, (val, test) in scores.items():
        r[f"val/{emb}/recall@1"] = val
        for m in bench.METRICS:
            r[f"test/{emb}/{m}"] = test if m == "recall@1" else 0.0
    return r


def test_select_picks_epoch_and_head_weights_by_validation_not_test():
    eq, low = "combined[1,1,1,1]", "combined[1,0.5,0.5,0.5]"
    metrics = [
        _record(0, **{eq: (0.9, 0.9), low: (0.9, 0.9)}),  # untrained: never selected
        _record(1, **{eq: (0.50, 0.80), low: (0.60, 0.10)}),
        _record(2, **{eq: (0.55, 0.99), low: (0.60, 0.20)}),  # ties epoch 1 on val: earlier wins
        _record(3, **{"discriminative": (0.99, 0.99), eq: (0.40, 0.40), low: (0.41, 0.41)}),
    ]
    got = bench.select(metrics)
    assert (got["epoch"], got["embedding"], got["recall@1"]) == (1, low, 0.10)
    assert bench.primary_name(metrics) == eq
    assert bench.untrained(metrics)["recall@1"] == 0.9


def test_single_head_runs_select_their_head():
    metrics = [_record(0, discriminative=(0.1, 0.1)), _record(1, discriminative=(0.3, 0.4)),
               _record(2, discriminative=(0.2, 0.5))]
    got = bench.select(metrics)
    assert (got["epoch"], got["embedding"], got["recall@1"]) == (1, "discriminative", 0.4)


def test_paired_difference_uses_matching_seeds():
    base = [{"seed": 0, "recall@1": 0.50}, {"seed": 1, "recall@1": 0.52}, {"seed": 2, "recall@1": 0.40}]
    row = [{"seed": 0, "recall@1": 0.53}, {"seed": 1, "recall@1": 0.53}]
    d = bench.paired_difference(row, base)
    assert d["n_seeds"] == 2 and d["per_seed"] == pytest.approx([0.03, 0.01])
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.02 ** 0.5 * 0.1)


def test_write_block_replaces_only_its_own_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- BENCHMARK_TABLE:emoji -->\nold\n<!-- /BENCHMARK_TABLE:emoji -->\nend\n")
    bench.write_block(str(path), "emoji", "| new |")
    bench.write_block(str(path), "glyphs", "| other |")
    assert path.read_text() == ("intro\n<!-- BENCHMARK_TABLE:emoji -->\n| new |\n"
                                "<!-- /BENCHMARK_TABLE:emoji -->\nend\n\n"
                                "<!-- BENCHMARK_TABLE:glyphs -->\n| other |\n"
                                "<!-- /BENCHMARK_TABLE:glyphs -->\n")


def test_row_flags_fill_in_chosen_flags_and_head_weight_combinations():
    a = bench.parse_args(["--chosen=--diva_moco_temperature=0.1 --diva_fixed=true"])
    flags = bench.row_flags(a, "diva_chosen")
    assert flags[1:3] == ["--diva_moco_temperature=0.1", "--diva_fixed=true"]
    assert flags[-1] == f"--eval_combinations={bench.COMBINATIONS}"
    assert not any(f.startswith("--eval_combinations") for f in bench.row_flags(a, "discriminative"))


@pytest.mark.parametrize("chosen,dims", [("--diva_moco_temperature=0.1", "4x128"),
                                         ("--head_dims=256,128,64,64 --diva_fixed", "256+128+64+64")])
def test_chosen_row_description_names_its_head_dimensions(chosen, dims):
    a = bench.parse_args([f"--chosen={chosen}"])
    assert bench.describe(a, "diva_chosen") == f"DiVA, chosen on validation ({dims}: {chosen})"


def test_a_finished_run_with_other_flags_is_refused_not_reused(tmp_path):
    a = bench.parse_args([f"--runs_dir={tmp_path}", "--data_dir=data/emoji",
                          "--chosen=--diva_moco_temperature=0.1"])
    workdir = bench.run_dir(a, "diva_chosen", 0)
    os.makedirs(workdir)
    # What `diva_tf.train` saves for exactly these flags: accepted.
    from diva_tf.config.flags import FLAGS, config_from_flags, define_flags
    define_flags()
    FLAGS.unparse_flags()
    FLAGS(["x", *bench.train_flags(a, "diva_chosen", 0)])
    cfg = config_from_flags()
    cfg.save(os.path.join(workdir, "config.json"))
    bench.check_same_settings(a, "diva_chosen", 0)
    # The same folder under another --chosen: a clear refusal naming the differing flag.
    cfg.replace(diva_aux_discriminative=1.0).save(os.path.join(workdir, "config.json"))
    with pytest.raises(SystemExit, match="--diva_aux_discriminative: run has 1.0, now 0.0.*--tag"):
        bench.check_same_settings(a, "diva_chosen", 0)


def _synthetic_run(a, row, seed, test_r1, epochs):
    """A run folder as `diva_tf.train` leaves it: config.json of the row's flags and metrics.jsonl
    whose best validation epoch (epochs - 1) has test R@1 `test_r1`."""
    from diva_tf.config.flags import FLAGS, config_from_flags, define_flags

    workdir = bench.run_dir(a, row, seed)
    os.makedirs(workdir)
    define_flags()
    FLAGS.unparse_flags()
    FLAGS(["x", *bench.train_flags(a, row, seed)])
    config_from_flags().save(os.path.join(workdir, "config.json"))
    emb = "discriminative" if row == "discriminative" else "combined[1,1,1,1]"
    records = [_record(e, **{emb: (0.9 if e == epochs - 1 else 0.1, test_r1 if e == epochs - 1 else 0.0)})
               for e in range(epochs + 1)]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _table_cells(md):
    """{row description: [cells]} of the markdown table."""
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def test_a_table_with_missing_seeds_reports_every_row_over_the_same_seeds(tmp_path):
    """Issue 25, item 4: baseline finished at seeds 0 and 1 (51.17, 49.61), DiVA chosen at seed 0
    only (52.05), DiVA published at 0 and 1 (50.00, 48.00), DiVA aux at none. Every row is reported
    over seed 0: baseline 51.17 (not the 50.39 of both seeds) and DiVA chosen - baseline = +0.88,
    the difference of the two printed means; the footer names what is missing and left out."""
    argv = [f"--runs_dir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}", "--data_dir=data/emoji",
            "--rows=discriminative,diva_published,diva_aux,diva_chosen", "--seeds=0,1", "--epochs=2",
            "--report_only"]
    a = bench.parse_args(argv)
    for row, seed, r1 in [("discriminative", 0, 0.5117), ("discriminative", 1, 0.4961), ("diva_chosen", 0, 0.5205),
                          ("diva_published", 0, 0.50), ("diva_published", 1, 0.48)]:
        _synthetic_run(a, row, seed, r1, a.epochs)
    _synthetic_run(a, "diva_chosen", 1, 0.53, a.epochs - 1)  # unfinished: one epoch short
    assert bench.main(argv) == 0
    with open(tmp_path / "out" / "emoji_diva_vs_baseline.md") as f:
        md = f.read()
    cells = _table_cells(md)
    base = cells[bench.describe(a, "discriminative")]
    chosen = cells[bench.describe(a, "diva_chosen")]
    published = cells[bench.describe(a, "diva_published")]
    assert len(cells) == 3  # diva_aux has no finished run
    assert base[1:4] == ["1", "51.17 ± 0.00", "–"]
    assert chosen[1:4] == ["1", "52.05 ± 0.00", "+0.88 ± 0.00"]
    assert published[1:4] == ["1", "50.00 ± 0.00", "-1.17 ± 0.00"]
    assert ("**Incomplete seed set: every row is reported over seed(s) 0, the seeds every row in the "
            "table finished. Not finished: diva_aux (none: row left out); diva_chosen seed 1. Left out of "
            "the table: discriminative seed 1; diva_published seed 1.**\n\n"
            "emoji test split (792 classes x 4 vendors), efficientnet_lite0 ImageNet, 64px, bs 112, "
            "2 epochs, lr 0.0001, seeds 0; ") in md
    with open(tmp_path / "out" / "emoji_diva_vs_baseline.json") as f:
        rows = json.load(f)["rows"]
    assert rows["discriminative"]["left_out_seeds"] == [1] and rows["diva_chosen"]["left_out_seeds"] == []
    assert rows["discriminative"]["summary"]["seeds"] == [0]
