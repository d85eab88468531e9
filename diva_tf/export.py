"""`python -m diva_tf.export --workdir DIR --export_dir export/models/diva [--version N]
[--checkpoint best|last] [--head_weights 0.5,1,1,1] [--overwrite]`: publish a training run's weights
as a TF Serving SavedModel version (`diva_tf.serving.export` says what is written and how)."""

from __future__ import annotations

if __name__ == "__main__":  # first, before TensorFlow is imported
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()

from diva_tf.core.cli import parse_flags, reports_errors


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training run folder (config.json + *.weights.h5).")
    flags.DEFINE_string("export_dir", "export/models/diva", "Model base path (TF Serving layout).")
    flags.DEFINE_integer("version", None, "Version to write (default: highest existing + 1).")
    flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Weights to export.")
    flags.DEFINE_string("head_weights", None, "Comma-separated test-time head weights, in "
                        "--diva_features order (default: the dataset's published weights).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --version.")
    flags.mark_flag_as_required("workdir")


@reports_errors(OSError)
def main(argv) -> int:
    from absl import app, flags, logging

    from diva_tf.config import parse_weights
    from diva_tf.runs.run_folder import export_workdir, load_config
    from diva_tf.serving.export import read_manifest  # imports TensorFlow: not for --help

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    weights = None
    if f.head_weights:
        weights = parse_weights(f.head_weights, len(load_config(f.workdir).diva_features))
    path = export_workdir(f.workdir, f.export_dir, f.version, f.checkpoint, weights, f.overwrite)
    manifest = read_manifest(path)
    logging.info("exported %s (heads %s, head weights %s, embedding dim %d)", path,
                 manifest["heads"], manifest["head_weights"], manifest["embedding_dim"])
    print(path)
    return 0


if __name__ == "__main__":
    from absl import app

    from diva_tf.config.flags import use_short_help

    _define_flags()
    use_short_help(__doc__)
    app.run(main, flags_parser=parse_flags)
