"""Markdown summary of steps_<row>.json (`run.py steps` writes both): per loss term, gradient
group and parameter group, the difference at step 1, the worst over the steps and at the last step,
for each diva_tf optimizer that followed the original run."""

from __future__ import annotations

import json
import os

# (section, field, what it is)
COLUMNS = (
    ("terms", "rel", "loss term |diva_tf - original| / |original|"),
    ("gradients", "norm_rel", "gradient norm, relative difference"),
    ("gradients", "diff_norm_rel", "gradient, ||diff|| / ||original||"),
    ("gradients", "max_rel", "gradient, max elementwise |diff| / max |original|"),
    ("gradients", "sign_flip_fraction", "gradient elements of opposite sign, fraction"),
    ("gradients", "sign_flip_max_rel", "gradient elements of opposite sign, max |g| / max |g| of group"),
    ("parameters", "norm_rel_to_update", "parameters, ||diff|| / ||original update so far||"),
    ("parameters", "max_rel", "parameters, max |diff| / max |original|"),
    ("key_encoder_after", "norm_rel_to_update", "key encoder after EMA, ||diff|| / ||update||"),
    ("key_encoder_after", "max_abs", "queue after enqueue, max |diff| (group 'queue')"),
    ("vs_twin_terms", "rel", "control: +ulp diva_tf vs diva_tf, loss term rel. difference"),
    ("vs_twin_parameters", "norm_rel_to_update", "control: +ulp diva_tf vs diva_tf, ||diff|| / ||update||"),
)


def _value(step: dict, section: str, key: str, field: str):
    entry = step.get(section, {}).get(key)
    return None if entry is None else entry.get(field)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def table(result: dict, row: str) -> str:
    runs = result["runs"]
    optimizers = list(runs)
    steps = {o: runs[o]["steps"] for o in optimizers}
    lines = [f"### {row}: {result['steps']} steps, config `{result['config']}`", "",
             "| quantity | group | " + " | ".join(f"{o}: step 1 / worst / last" for o in optimizers)
             + " |", "|---|---|" + "---|" * len(optimizers)]
    for section, field, label in COLUMNS:
        keys = sorted({k for o in optimizers for s in steps[o] for k in s.get(section, {})})
        if section == "key_encoder_after":
            keys = ["queue"] if field == "max_abs" else [k for k in keys if k != "queue"]
        for key in keys:
            cells = []
            for o in optimizers:
                vals = [_value(s, section, key, field) for s in steps[o]]
                present = [v for v in vals if v is not None]
                if not present:
                    cells.append("-")
                    continue
                cells.append(f"{_fmt(vals[0])} / {_fmt(max(present))} / {_fmt(vals[-1])}")
            if any(c != "-" for c in cells):
                lines.append(f"| {label} | {key} | " + " | ".join(cells) + " |")
    initial = {o: runs[o]["initial"] for o in optimizers if not o.endswith("+ulp")}
    worst_initial = max(v["max_abs"] for o in initial for v in initial[o]["variables"].values())
    queue = [initial[o].get("queue", {}).get("max_abs") for o in initial]
    lines += ["", f"Initial state (the +ulp control aside): max |diff| over every variable "
              f"{worst_initial:.1e}"
              + (f", queue {max(q for q in queue if q is not None):.1e}" if any(q is not None for q in queue) else "")
              + "."]
    return "\n".join(lines)


def write_markdown(out_dir: str, rows) -> None:
    parts = ["# Trajectory parity: the original DiVA code vs diva_tf, step by step", "",
             "Written by `python -m benchmarks.parity.run steps` (see benchmarks/parity/README.md).", ""]
    for row in rows:
        path = os.path.join(out_dir, f"steps_{row}.json")
        if os.path.exists(path):
            with open(path) as f:
                parts += [table(json.load(f), row), ""]
    with open(os.path.join(out_dir, "steps.md"), "w") as f:
        f.write("\n".join(parts))
