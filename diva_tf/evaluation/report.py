"""Presenting evaluation results: a fixed-width table and a JSON file."""

from __future__ import annotations

import json
import math

from diva_tf.core.atomic import atomic_file


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(results: dict, metrics=None) -> str:
    """One row per embedding, one column per metric (default: all, in first-seen order)."""
    if metrics is None:
        metrics = list(dict.fromkeys(m for scores in results.values() for m in scores))
    rows = [["embedding", *metrics]]
    rows += [[name, *(_cell(scores.get(m, "")) for m in metrics)] for name, scores in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_safe(value):
    """NaN/inf -> None, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, results: dict, meta: dict | None = None) -> None:
    """{"results": results, "meta": meta} written atomically (write, then rename)."""
    with atomic_file(path) as f:
        json.dump(_json_safe({"results": results, "meta": meta or {}}), f, indent=2, allow_nan=False)
        f.write("\n")
