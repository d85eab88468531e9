"""Export a trained embedding model as a TF Serving SavedModel, and read one back.

`python -m diva_tf.export --workdir DIR --export_dir export/models/diva [--version N]
[--checkpoint best|last] [--head_weights 0.5,1,1,1] [--overwrite]` (a run folder's export,
`diva_tf.runs.run_folder.export_workdir`), or `export_model` on any embedding model.

Layout (what TF Serving watches): `<export_dir>/<version>/saved_model.pb`, `variables/`,
`assets/diva_manifest.json`. A version is written to a hidden temporary folder beside it and
renamed into place, so a server polling `<export_dir>` never sees half an export.

Temporary folders are named `.tmp-<version>-<host>.<pid>-XXXX` (and `.old-<version>-...` for a
version moved aside by --overwrite): the next export into the same `<export_dir>` removes those
whose process is dead on this host, and puts an `.old-` copy back if its version is missing (a
crash between the two renames of a swap). Folders of a live process, of another host, or in an
older naming without the owner are left alone (remove them by hand when no export is running).

The manifest's `source` is portable, not a path of the machine that trained: `run` (the run
folder's name), `workdir` (the run folder relative to the current directory when it is inside it,
else null), `checkpoint`, and `config` (the run's config.json, with every absolute path in it
likewise made relative to the current directory, or reduced to its last component).

Signatures:
- `serving_default`: `image_bytes` tf.string [n] (JPEG/PNG/GIF/BMP/WebP, any size) -> decoded to
  RGB, then the evaluation transform (resize the shorter side to `resize`, centre crop `crop`) and
  the model. Decoder and transform are the functions the evaluation pipeline maps over its images.
- `serve_images`: `images` float32 [n, crop, crop, 3] in 0..255 -> the model, with NO resize or
  crop: the caller must pass images already transformed as above.
Both return `embedding` (heads weighted by the baked-in head weights, concatenated and
re-normalised, algorithm.md 2.4) and each head's unit-norm embedding under the head's name.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from diva_tf.core.atomic import atomic_folder, clean_stale
from diva_tf.core.errors import DivaError
from diva_tf.core.renamed import renamed_keywords

MANIFEST_FILE = "diva_manifest.json"
BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serve_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
EMBEDDING_OUTPUT = "embedding"


class ExportError(DivaError, RuntimeError):
    """An export that must not happen (e.g. it would overwrite a published version)."""


# ---- TF Serving layout ----------------------------------------------------------------------
def list_versions(base_path: str) -> list[int]:
    """Published versions under a model base path, ascending (integer folders with a SavedModel)."""
    if not os.path.isdir(base_path):
        return []
    return sorted(int(name) for name in os.listdir(base_path)
                  if name.isdigit()
                  and os.path.exists(os.path.join(base_path, name, "saved_model.pb")))


def next_version(base_path: str) -> int:
    versions = list_versions(base_path)
    return versions[-1] + 1 if versions else 1


def resolve_saved_model(path: str) -> tuple[str, int | None]:
    """A version folder, or a base path (-> its highest version): (version_dir, version)."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        name = os.path.basename(os.path.normpath(path))
        return path, int(name) if name.isdigit() else None
    versions = list_versions(path)
    if not versions:
        raise ExportError(f"{path} is neither a SavedModel nor a model base path holding "
                          "<version>/saved_model.pb")
    return os.path.join(path, str(versions[-1])), versions[-1]


def read_manifest(version_dir: str) -> dict:
    path = os.path.join(version_dir, "assets", MANIFEST_FILE)
    if not os.path.exists(path):
        raise ExportError(f"{version_dir} has no assets/{MANIFEST_FILE}: not a diva_tf export")
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ExportError(f"{path} is not valid JSON ({e}): re-export the model") from None


# The files of a version that change with any re-export or new weights (read first by a load).
IDENTITY_FILES = ("saved_model.pb", os.path.join("variables", "variables.index"))


def fingerprint(version_dir: str) -> str:
    """sha256 over the graph and the variable index: changes with any re-export or new weights."""
    digest = hashlib.sha256()
    for rel in IDENTITY_FILES:
        with open(os.path.join(version_dir, rel), "rb") as f:
            digest.update(rel.encode() + b"\0" + f.read())
    return digest.hexdigest()


# ---- the exported graph ---------------------------------------------------------------------
def eval_preprocess(image_bytes: tf.Tensor, pipeline) -> tf.Tensor:
    """One encoded image -> float32 [crop, crop, 3], composed exactly as `data.eval_dataset`
    does with `PipelineOptions` (resize, crop): the data pipeline's decoder, then its test view."""
    from diva_tf.data.augment import test_view
    from diva_tf.data.source import decode_rgb

    return test_view(decode_rgb(image_bytes), pipeline.resize, pipeline.crop)


def embedding_outputs(model, heads, head_weights, images):
    """{'embedding': combined, head: per-head} for images already at model input."""
    from diva_tf.evaluation.combine import combine_heads_tf

    per_head = model(images, training=False)
    outputs = {EMBEDDING_OUTPUT: combine_heads_tf(per_head, heads, head_weights)}
    outputs.update({h: per_head[h] for h in heads})
    return outputs


def build_archive(model, heads, head_weights, pipeline):
    """ExportArchive with the `serving_default` (encoded bytes) and `serve_images` endpoints."""
    import keras

    image_spec = tf.TensorSpec([pipeline.crop, pipeline.crop, 3], tf.float32)

    def from_images(images):
        return embedding_outputs(model, heads, head_weights, images)

    def from_bytes(image_bytes):
        images = tf.map_fn(lambda b: eval_preprocess(b, pipeline), image_bytes,
                           fn_output_signature=image_spec)
        return from_images(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(BYTES_SIGNATURE, from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(IMAGES_SIGNATURE, from_images,
                         input_signature=[tf.TensorSpec([None, pipeline.crop, pipeline.crop, 3],
                                                        tf.float32, name=IMAGES_INPUT)])
    return archive


# ---- manifest -------------------------------------------------------------------------------
def run_metrics(workdir: str, heads, head_weights, checkpoint: str = "best") -> dict | None:
    """Scores of the exported combination from workdir/metrics.jsonl, if the run logged any:
    its best epoch by R@1 (for 'best' weights) or its last evaluated epoch (for 'last').

    R@1 is read on `val` when the run has a validation split, else on `test`, as training selects;
    the embedding is the one named for the exported head weights (else the first one logged).
    """
    from diva_tf.training import workdir as wd
    from diva_tf.evaluation.combine import combination_name

    path = os.path.join(workdir, wd.METRICS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    keys = list(dict.fromkeys(k for r in records for k in r if k.endswith("/recall@1")))
    if not keys:
        return None
    split = "val/" if any(k.startswith("val/") for k in keys) else "test/"
    keys = [k for k in keys if k.startswith(split)] or keys
    name = combination_name(heads, head_weights)
    key = next((k for k in keys if k.split("/")[-2] == name), keys[0])
    scored = [r for r in records if isinstance(r.get(key), (int, float))]
    chosen = scored[-1] if checkpoint == "last" else max(scored, key=lambda r: r[key])
    prefix = key.rsplit("/", 1)[0] + "/"
    return {"selection_key": key, "epoch": chosen.get("epoch"),
            "scores": {k[len(prefix):]: v for k, v in chosen.items() if k.startswith(prefix)}}


def make_manifest(model, heads, head_weights, pipeline, version: int, metrics: dict | None,
                  source: dict, dataset: str | None, backbone: str | None) -> dict:
    from diva_tf.core.version import __version__

    dims = [int(model.output[h].shape[-1]) for h in heads]
    return {
        "heads": heads,
        "head_weights": [float(w) for w in head_weights],
        "head_dims": dims,
        "embedding_dim": sum(dims),
        "crop": pipeline.crop,
        "resize": pipeline.resize,
        "backbone": backbone,
        "dataset": dataset,
        "diva_tf_version": __version__,
        "model_version": int(version),
        "signatures": {BYTES_SIGNATURE: BYTES_INPUT, IMAGES_SIGNATURE: IMAGES_INPUT},
        "metrics": metrics,
        "source": source,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---- publishing -----------------------------------------------------------------------------
def export_model(model, pipeline, export_dir: str, version: int | None = None, head_weights=None,
                 overwrite: bool = False, metrics: dict | None = None, source: dict | None = None,
                 *, heads=None, dataset: str | None = None, backbone: str | None = None) -> str:
    """Write an embedding model (`build_embedding_model`) as `<export_dir>/<version>`
    atomically; returns the version folder.

    `pipeline` (`PipelineOptions`) gives the evaluation view the bytes signature applies (resize,
    crop). heads default to the model's outputs in order, head_weights to the dataset's published
    ones (all 1 for other datasets); dataset and backbone are recorded in the manifest. version
    defaults to the highest published version + 1. An existing version is refused unless
    `overwrite`, in which case it is swapped out only after the new one is complete. Leftovers of
    dead exports into export_dir are cleaned first.
    """
    from diva_tf.evaluation.options import published_head_weights

    heads = list(model.output) if heads is None else list(heads)
    head_weights = tuple(published_head_weights(dataset, heads) if head_weights is None
                         else head_weights)
    if len(head_weights) != len(heads) or min(head_weights) < 0 or max(head_weights) <= 0:
        raise ExportError(f"head weights {head_weights} for heads {heads}: need one non-negative "
                          "weight per head, not all zero")
    os.makedirs(export_dir, exist_ok=True)
    clean_stale(export_dir)
    version = next_version(export_dir) if version is None else int(version)
    if version <= 0:
        raise ExportError(f"--version must be a positive integer, got {version}")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise ExportError(f"{final} already exists; pass --overwrite to replace it, or omit "
                          "--version to publish the next one")
    try:
        with atomic_folder(final, replace=overwrite) as tmp:
            build_archive(model, heads, head_weights, pipeline).write_out(tmp, verbose=False)
            os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
            manifest = make_manifest(model, heads, head_weights, pipeline, version, metrics,
                                     source or {}, dataset, backbone)
            with open(os.path.join(tmp, "assets", MANIFEST_FILE), "w") as f:
                json.dump(manifest, f, indent=2)
    except FileExistsError as e:
        raise ExportError(str(e)) from None
    return final


def relative_to_cwd(path: str) -> str | None:
    """path relative to the current directory if it is inside it, else None."""
    rel = os.path.relpath(os.path.abspath(path), os.getcwd())
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def portable_path(path: str) -> str:
    """A path that says nothing about this machine: relative to the current directory when it is
    inside it, else its last component."""
    return relative_to_cwd(path) or os.path.basename(os.path.abspath(path))


def run_source(workdir: str, config: dict, checkpoint: str) -> dict:
    """Where an export came from, portably (see the module docstring); `config` is the run's
    config.json as a dict."""
    config = {k: portable_path(v) if isinstance(v, str) and os.path.isabs(v) else v
              for k, v in config.items()}
    return {"run": os.path.basename(os.path.abspath(workdir)), "workdir": relative_to_cwd(workdir),
            "checkpoint": checkpoint, "config": config}


@dataclasses.dataclass
class LoadedExport:
    """A loaded export; `root` owns the variables, so keep it as long as a signature is used."""

    root: object
    version_dir: str
    version: int | None
    manifest: dict

    def signature(self, name: str = BYTES_SIGNATURE):
        if name not in self.root.signatures:
            raise ExportError(f"{self.version_dir} has no signature {name!r} "
                              f"(has {sorted(self.root.signatures)})")
        return self.root.signatures[name]

    def embed_bytes(self, encoded: list, output: str = EMBEDDING_OUTPUT) -> np.ndarray:
        """Run `serving_default` on a list of encoded images."""
        return self.signature()(**{BYTES_INPUT: tf.constant(encoded, tf.string)})[output].numpy()


@renamed_keywords(saved_model="export_dir")
def load_export(export_dir: str) -> LoadedExport:
    """A version folder or a base path (-> highest version), loaded with TensorFlow alone."""
    version_dir, version = resolve_saved_model(export_dir)
    return LoadedExport(tf.saved_model.load(version_dir), version_dir, version,
                        read_manifest(version_dir))
