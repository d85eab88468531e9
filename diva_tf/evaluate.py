"""Evaluate a trained DiVA model on the test split of its dataset (algorithm.md 7), or on every class of
it (`--classes=all`, e.g. a user's own folder of images): every head alone and every weighted head
combination, with Recall@k, NMI, F1, mAP@C, MAP@R and R-precision.

    python -m diva_tf.evaluate --workdir runs/cub [--checkpoint best|last] [--data_dir DIR]
    python -m diva_tf.evaluate --export_dir export/models/diva[/N] --dataset cub200 --data_dir DIR
        [--eval_combinations "0.5,1,1,1;1,1,1,1"] [--recall_k 1,2,4,8] [--n_clusters N]
        [--output_json results.json] [--save_retrievals 8] [--max_images 500] [--kmeans_seed 1234]
    python -m diva_tf.evaluate --export_dir export/models/diva --dataset folder --data_dir DIR \
        --classes all

The flags are parsed here; `diva_tf.runs.evaluate` (`evaluate_run`, `evaluate_export`) does the
work and says what the defaults are. --eval_combinations replaces the default combinations;
--max_images caps every split as the training flag does (quick runs), so it also lowers the
k-means class count.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before TensorFlow is imported
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()

from diva_tf.config import ConfigError, parse_weights
from diva_tf.core.cli import define_renamed, parse_flags, reports_errors
from diva_tf.data.datasets import dataset_in
from diva_tf.evaluation import FAISS_DEFAULT_SEED
from diva_tf.runs.evaluate import CLASSES, Target, run, saved_model_target, workdir_target

__all__ = ["main", "parse_combinations", "parse_recall_k", "run", "target_from_flags"]


def parse_combinations(text: str | None, n_heads: int) -> list:
    """'0.5,1,1,1;1,1,1,1' -> [(0.5, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)]."""
    return [parse_weights(c, n_heads) for c in (text or "").split(";") if c.strip()]


# ---- CLI ------------------------------------------------------------------------------------
USAGE = """Score a trained model on the test classes of its dataset, or on every class of a folder
(--classes=all): Recall@k, NMI, F1, mAP for every head and head combination.

usage: python -m diva_tf.evaluate --workdir=runs/<name> [--checkpoint=best|last]
       python -m diva_tf.evaluate --export_dir=export/models/diva --dataset=folder --data_dir=DIR
           [--classes=all]"""


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training run folder (config.json + best/last weights).")
    flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Weights of --workdir.")
    flags.DEFINE_string("export_dir", None, "Exported SavedModel: a version folder or a model "
                        "base path (its highest version).")
    flags.DEFINE_string("dataset", None, "Dataset name (default: the run's or the export's).")
    flags.DEFINE_string("data_dir", None, "Dataset folder (default: the run's).")
    flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir (default: the run's).")
    flags.DEFINE_enum("classes", "test", list(CLASSES), "test: the test split of the dataset's "
                      "split rule; all: every class of the dataset (e.g. your whole folder).")
    flags.DEFINE_list("train_classes", None, "folder dataset: training class folders (the test "
                      "split is the rest; default: the run's, else the first half).")
    flags.DEFINE_list("test_classes", None, "folder dataset: test class folders (default: the "
                      "run's, else the second half of the sorted class folders).")
    flags.DEFINE_string("eval_combinations", None, "Head-weight combinations separated by ';', "
                        "e.g. '0.5,1,1,1;1,1,1,1' (default: the model's).")
    flags.DEFINE_list("recall_k", [], "Recall@k cut-offs (default 1,2,4,8; SOP 1,10,100,1000).")
    flags.DEFINE_integer("n_clusters", None, "k-means clusters (default: training classes).")
    flags.DEFINE_integer("kmeans_seed", FAISS_DEFAULT_SEED, "k-means seed (NMI, F1); also picks "
                         "the queries of --save_retrievals.")
    flags.DEFINE_integer("eval_batch_size", None, "Images per embedding call (default: the "
                         "run's --eval_batch_size).")
    flags.DEFINE_integer("max_images", 0, "Cap the images per split (0 = all), for quick runs.")
    flags.DEFINE_string("output_json", None, "Write the results here as JSON.")
    flags.DEFINE_integer("save_retrievals", 0, "Save a PNG of this many random queries with "
                         "their nearest neighbours (green = same class, red = other).")
    flags.DEFINE_string("retrievals_png", None, "Path of that PNG (default: retrievals.png "
                        "beside --output_json, else in the current folder).")
    flags.DEFINE_integer("retrievals_k", 4, "Neighbours per query in the PNG.")
    for old, new in (("saved_model", "export_dir"), ("seed", "kmeans_seed"),
                     ("batch_size", "eval_batch_size")):
        define_renamed(old, new)


def target_from_flags(f) -> Target:
    """The model named by --workdir or --export_dir, with the data flags applied."""
    if bool(f.workdir) == bool(f.export_dir):
        raise ConfigError("pass exactly one of --workdir and --export_dir")
    target = (workdir_target(f.workdir, f.checkpoint) if f.workdir
              else saved_model_target(f.export_dir, f.dataset))
    overrides = {"max_images": f.max_images}
    for name in ("dataset", "data_dir", "tfds_data_dir", "train_classes", "test_classes"):
        if getattr(f, name) is not None:
            overrides[name] = getattr(f, name)
    if f.data_dir is not None and f.dataset is None:  # the folder given says what it holds
        overrides["dataset"] = dataset_in(f.data_dir, target.cfg.dataset)
    if f.eval_batch_size:
        overrides["eval_batch_size"] = f.eval_batch_size
    target.cfg = target.cfg.replace(**overrides)
    return target


def parse_recall_k(values) -> list:
    try:
        ks = [int(k) for k in values]
    except ValueError:
        raise ConfigError(f"--recall_k={','.join(values)}: expected positive integers") from None
    if any(k < 1 for k in ks):
        raise ConfigError(f"--recall_k={','.join(values)}: expected positive integers")
    return ks


@reports_errors()
def main(argv) -> int:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]} (flags need --name=value)")
    f = flags.FLAGS
    recall_k = parse_recall_k(f.recall_k)
    target = target_from_flags(f)
    run(target, parse_combinations(f.eval_combinations, len(target.cfg.diva_features)),
        recall_k, f.n_clusters, f.kmeans_seed, f.output_json, f.save_retrievals, f.retrievals_png,
        f.retrievals_k, classes=f.classes)
    return 0


if __name__ == "__main__":
    from absl import app

    from diva_tf.config.flags import use_short_help

    define_flags()
    use_short_help(USAGE)
    app.run(main, flags_parser=parse_flags)
