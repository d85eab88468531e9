"""The README's results table states what the committed benchmark outputs say: each cell's mean and
std over seeds, and the paired difference to the baseline, recomputed here from the per-seed
numbers in benchmarks/results/issue12/<name>_diva_vs_baseline.json."""

from __future__ import annotations

import json
import os
import re
import statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# README row label -> (benchmark name, metric); columns -> benchmark rows
ROWS = {"emoji 64 px, R@1": ("emoji", "recall@1"), "emoji 96 px, R@1": ("emoji_96px", "recall@1"),
        "glyphs, MAP@R": ("glyphs", "map@r")}
COLUMNS = ("discriminative", "diva_published", "diva_chosen")
CELL = re.compile(r"^(?P<mean>-?\d+\.\d\d) ± (?P<std>\d+\.\d\d)(?: \((?P<diff>-?\d+\.\d\d)\))?$")


def readme_table() -> dict:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    after = text[text.index("<!-- RESULTS_TABLE"):].split("\n")[1:]
    lines = after[:next(i for i, line in enumerate(after) if not line.startswith("|"))]
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def per_seed(rows: dict, row: str, metric: str) -> dict:
    return {r["seed"]: 100 * r[metric] for r in rows[row]["per_seed"]}


def test_readme_results_match_the_committed_benchmarks():
    table = readme_table()
    assert set(table) == set(ROWS)
    for label, (name, metric) in ROWS.items():
        with open(os.path.join(REPO, "benchmarks", "results", "issue12",
                               f"{name}_diva_vs_baseline.json")) as f:
            rows = json.load(f)["rows"]
        base = per_seed(rows, "discriminative", metric)
        for column, cell in zip(COLUMNS, table[label]):
            if column not in rows:
                assert cell == "–", f"{label} / {column}: no such run, expected '–'"
                continue
            m = CELL.match(cell)
            assert m, f"{label} / {column}: cannot read {cell!r}"
            values = per_seed(rows, column, metric)
            assert len(values) == 3 and set(values) == set(base)
            assert float(m["mean"]) == round(statistics.mean(values.values()), 2), (label, column)
            assert float(m["std"]) == round(statistics.stdev(values.values()), 2), (label, column)
            diff = statistics.mean(values[s] - base[s] for s in base)
            assert (m["diff"] is None) == (column == "discriminative")
            if m["diff"] is not None:
                assert float(m["diff"]) == round(diff, 2), (label, column)
