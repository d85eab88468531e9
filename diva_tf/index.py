"""`python -m diva_tf.index build --saved_model export/models/diva[/N] --images DIR
[--labels_from_folders] --out INDEX_DIR` and `python -m diva_tf.index search --index INDEX_DIR
--saved_model export/models/diva[/N] [--k 5] IMAGE...`: a faiss retrieval index over an export
(`diva_tf.serving.index` says what it holds and checks)."""

from __future__ import annotations

if __name__ == "__main__":  # first, before TensorFlow is imported
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()

import sys

from diva_tf.serving.index import (IndexDataError, IndexMismatchError, build_index, format_hits,
                                    search_images)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("saved_model", "export/models/diva",
                        "Export version folder, or its base path (-> highest version).")
    flags.DEFINE_string("images", None, "build: folder of images to index (searched recursively).")
    flags.DEFINE_bool("labels_from_folders", False,
                      "build: label = first sub-folder below --images.")
    flags.DEFINE_string("out", None, "build: output index folder.")
    flags.DEFINE_integer("batch_size", 64, "build: images per SavedModel call.")
    flags.DEFINE_string("index", None, "search: index folder.")
    flags.DEFINE_integer("k", 5, "search: neighbours per query.")


def run_search(index_dir: str, saved_model: str, images: list[str], k: int) -> int:
    """Print the hits of each query and one error line per query that failed; exit code."""
    status = 0
    for query, result in zip(images, search_images(index_dir, saved_model, images, k)):
        if isinstance(result, str):
            print(f"error: {query}: {result}", file=sys.stderr, flush=True)
            status = 2
        else:
            print(format_hits(query, result), flush=True)
    return status


def main(argv) -> int:
    from absl import app, flags

    f = flags.FLAGS
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    for name in ("k", "batch_size"):
        if f[name].value < 1:
            print(f"error: --{name}={f[name].value}: must be at least 1", file=sys.stderr)
            return 2
    from diva_tf.serving.export import ExportError  # after the flag checks: it imports TensorFlow

    try:
        if command == "build":
            if args or not f.images or not f.out:
                raise app.UsageError("build needs --images and --out, and no positional arguments")
            build_index(f.saved_model, f.images, f.out, f.labels_from_folders, f.batch_size)
        elif command == "search":
            if not args or not f.index:
                raise app.UsageError("search needs --index and at least one IMAGE")
            return run_search(f.index, f.saved_model, args, f.k)
        else:
            raise app.UsageError("usage: python -m diva_tf.index build|search [flags] [IMAGE...]")
    except (IndexMismatchError, IndexDataError, ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from absl import app

    from diva_tf.config.flags import use_short_help

    _define_flags()
    use_short_help(__doc__)
    app.run(main)
