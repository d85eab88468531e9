"""`python -m diva_tf.index build --export_dir export/models/diva[/N] --images DIR
[--labels_from_folders] [--index_type Flat|HNSW32|IVF1024,Flat|IVF4096,PQ64|...]
[--nprobe N] [--ef_search N] [--k_factor N] --out INDEX_DIR`,
`python -m diva_tf.index add --index INDEX_DIR --export_dir ... --images DIR`,
`python -m diva_tf.index remove --index INDEX_DIR --ids 3,17` and
`python -m diva_tf.index search --index INDEX_DIR --export_dir export/models/diva[/N] [--k 5]
IMAGE...`: a faiss retrieval index over an export (`diva_tf.serving.index` says what it holds and
checks; docs/indexes.md which index type when)."""

from __future__ import annotations

if __name__ == "__main__":  # first, before TensorFlow is imported
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()

import sys

from diva_tf.core.cli import define_renamed, reports_errors
from diva_tf.core.errors import ConfigError
from diva_tf.serving.index import (DEFAULT_INDEX_TYPE, DEFAULT_SEED, DEFAULT_TRAIN_SIZE,
                                    IndexDataError, add_images, build_index, format_hits,
                                    remove_items, search_images)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("export_dir", "export/models/diva",
                        "Export version folder, or its base path (-> highest version).")
    flags.DEFINE_string("images", None,
                        "build, add: folder of images to index (searched recursively).")
    flags.DEFINE_bool("labels_from_folders", False,
                      "build, add: label = first sub-folder below --images.")
    flags.DEFINE_string("out", None, "build: output index folder.")
    flags.DEFINE_integer("eval_batch_size", 64, "build, add: images per embedding call.")
    flags.DEFINE_string("index_type", DEFAULT_INDEX_TYPE,
                        "build: faiss index_factory string (Flat = exact; docs/indexes.md).")
    flags.DEFINE_integer("nprobe", None,
                         "build, search: IVF lists searched per query (default: the manifest's).")
    flags.DEFINE_integer("ef_search", None,
                         "build, search: HNSW efSearch (default: the manifest's).")
    flags.DEFINE_integer("k_factor", None, "build, search: candidates re-ranked per hit, for "
                         "re-ranking (...,RFlat) types (default: the manifest's).")
    flags.DEFINE_integer("train_size", DEFAULT_TRAIN_SIZE,
                         "build: gallery vectors a trained index type trains on.")
    flags.DEFINE_integer("sample_seed", DEFAULT_SEED,
                         "build: seed of the sample a trained index type trains on.")
    flags.DEFINE_string("index", None, "search, add, remove: index folder.")
    flags.DEFINE_list("ids", None, "remove: item ids to remove (items.json `id`).")
    flags.DEFINE_integer("k", 5, "search: neighbours per query.")
    for old, new in (("saved_model", "export_dir"), ("batch_size", "eval_batch_size"),
                     ("seed", "sample_seed")):
        define_renamed(old, new)


def run_search(index_dir: str, export_dir: str, images: list[str], k: int, **knobs) -> int:
    """Print the hits of each query and one error line per query that failed; exit code."""
    status = 0
    for result in search_images(index_dir, export_dir, images, k, **knobs):
        if result.ok:
            print(format_hits(result.query, result.hits), flush=True)
        else:
            print(f"error: {result.query}: {result.error}", file=sys.stderr, flush=True)
            status = 2
    return status


def parse_ids(values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise IndexDataError(f"--ids={','.join(values)}: must be item ids (integers)") from None


def run(command: str | None, args: list[str], f) -> int:
    from absl import app

    knobs = {"nprobe": f.nprobe, "ef_search": f.ef_search, "k_factor": f.k_factor}
    if command == "build":
        if args or not f.images or not f.out:
            raise app.UsageError("build needs --images and --out, and no positional arguments")
        build_index(f.export_dir, f.images, f.out, f.labels_from_folders, f.eval_batch_size,
                    f.index_type, train_size=f.train_size, sample_seed=f.sample_seed, **knobs)
    elif command == "add":
        if args or not f.images or not f.index:
            raise app.UsageError("add needs --index and --images, and no positional arguments")
        add_images(f.index, f.export_dir, f.images, f.labels_from_folders, f.eval_batch_size)
    elif command == "remove":
        if args or not f.index or not f.ids:
            raise app.UsageError("remove needs --index and --ids, and no positional arguments")
        remove_items(f.index, parse_ids(f.ids))
    elif command == "search":
        if not args or not f.index:
            raise app.UsageError("search needs --index and at least one IMAGE")
        return run_search(f.index, f.export_dir, args, f.k, **knobs)
    else:
        raise app.UsageError("usage: python -m diva_tf.index build|add|remove|search [flags] "
                             "[IMAGE...]")
    return 0


@reports_errors(OSError)
def main(argv) -> int:
    from absl import flags

    f = flags.FLAGS
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    for name in ("k", "eval_batch_size", "train_size", "nprobe", "ef_search", "k_factor"):
        if f[name].value is not None and f[name].value < 1:
            raise ConfigError(f"--{name}={f[name].value}: must be at least 1")
    return run(command, args, f)


if __name__ == "__main__":
    from absl import app

    from diva_tf.config.flags import use_short_help
    from diva_tf.core.cli import parse_flags

    _define_flags()
    use_short_help(__doc__)
    app.run(main, flags_parser=parse_flags)
