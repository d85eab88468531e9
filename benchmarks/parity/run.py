"""Parity harness CLI: the original PyTorch DiVA code (a checkout at --official_dir) next to
diva_tf, on diva_tf's emoji split (see benchmarks/parity/README.md).

    python -m benchmarks.parity.run steps  --official_dir DIR [--rows baseline,diva] [--steps 24]
                                           [--optimizers adam,adam_torch,adam_torch+ulp]
    python -m benchmarks.parity.run curves --official_dir DIR --row diva --seed 0 [--epochs 40]
    python -m benchmarks.parity.run speed  --official_dir DIR [--threads 1,2] [--blocks 3] [--iters 5]
    python -m benchmarks.parity.run report [--runs_dir ...]

Needs `pip install -e '.[cpu,lite,parity]'` (torch is not a dependency of diva_tf).
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # `python benchmarks/parity/run.py` as well as `python -m`
    sys.path.insert(0, REPO)

RESULTS = os.path.join(REPO, "benchmarks", "results", "parity")
COMMITTED = os.path.join(REPO, "benchmarks", "results", "issue12", "runs", "emoji")
# row -> the committed diva_tf run folder stem whose config.json both implementations follow
ROWS = {"baseline": "discriminative", "diva": "diva_published"}


def committed_config(row: str, seed: int) -> str:
    return os.path.join(COMMITTED, f"{ROWS[row]}_seed{seed}", "config.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_official(name, help_text):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--official_dir", default="",
                       help="checkout of Confusezius/ECCV2020_DiVA_MultiFeature_DML (e5713049)")
        s.add_argument("--data_dir", default=os.path.join(REPO, "data", "emoji"),
                       help="prepared emoji folder (python -m diva_tf.data.prepare emoji)")
        return s

    s = with_official("steps", "trajectory parity from identical starting points")
    s.add_argument("--rows", default="baseline,diva")
    s.add_argument("--steps", type=int, default=24, help="optimizer steps (one emoji epoch: 24)")
    s.add_argument("--optimizers", default="adam,adam_torch,adam_torch+ulp",
                   help="diva_tf optimizers following the same original run (+ulp: control)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", default=RESULTS)

    s = with_official("curves", "one original run under the committed emoji protocol (resumable)")
    s.add_argument("--row", choices=sorted(ROWS), required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--epochs", type=int, default=0, help="stop after this epoch (0 = the config's)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--runs_dir", default=os.path.join(RESULTS, "runs"),
                   help="metrics.jsonl / config go here (committed)")
    s.add_argument("--state_dir", default="runs/parity_state",
                   help="checkpoints and the original's own logs (not committed)")

    s = with_official("speed", "train-step time, original vs diva_tf, alternating blocks")
    s.add_argument("--threads", default="1,2")
    s.add_argument("--models", default="lite0_64,resnet50_224")
    s.add_argument("--bs", type=int, default=112)
    s.add_argument("--resnet_bs", type=int, default=32,
                   help="batch of the ResNet-50 224-px case (112 needs ~20 GB for both sides)")
    s.add_argument("--blocks", type=int, default=3)
    s.add_argument("--iters", type=int, default=5, help="timed steps per block")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--out", default="", help="JSON output (default: print only)")
    s.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: one thread count

    s = sub.add_parser("report", help="curves JSON + plot from whatever epochs exist")
    s.add_argument("--runs_dir", default=os.path.join(RESULTS, "runs"))
    s.add_argument("--diva_tf_runs", default=COMMITTED)
    s.add_argument("--out", default=RESULTS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from benchmarks.parity.official import ParityError, check_official_dir, require_torch

    try:
        if a.command != "report":
            a.official_dir = check_official_dir(a.official_dir)
            require_torch()
        if a.command == "steps":
            from benchmarks.parity import steps, steps_table
            for row in a.rows.split(","):
                result = steps.run(a.official_dir, committed_config(row, 0), a.data_dir, a.steps,
                                   a.optimizers.split(","), a.threads)
                steps.write(result, os.path.join(a.out, f"steps_{row}.json"))
            steps_table.write_markdown(a.out, a.rows.split(","))
        elif a.command == "curves":
            from benchmarks.parity import curves
            curves.run(a, committed_config(a.row, a.seed))
        elif a.command == "speed":
            from benchmarks.parity import speed
            speed.main(a)
        else:
            from benchmarks.parity import report
            report.main(a)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
