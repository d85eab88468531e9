"""Image retrieval over a diva_tf export: a faiss inner-product index of its unit-norm embeddings.

`python -m diva_tf.index build --export_dir export/models/diva[/N] --images DIR
[--labels_from_folders] [--index_type FACTORY] [--nprobe N] [--ef_search N] [--k_factor N]
--out INDEX_DIR`
`python -m diva_tf.index add --index INDEX_DIR --export_dir ... --images DIR`
`python -m diva_tf.index remove --index INDEX_DIR --ids 3,17`
`python -m diva_tf.index search --index INDEX_DIR --export_dir export/models/diva[/N] [--k 5]
IMAGE...`

Embeddings come from the SavedModel's `serving_default` (encoded bytes in, so the index sees the
exact preprocessing a served model applies). Embeddings are unit-norm, so inner product = cosine
similarity and ranks like the Euclidean distance DiVA evaluates with. An index remembers which
SavedModel built it (path, version, fingerprint) and refuses to be queried with another one:
embeddings of two different models are not comparable.

Over REST (export/client.py --index) there are no files to fingerprint, and TF Serving's
/metadata shows only signature defs, so the manifest also keeps a *probe*: a fixed 32x32 PNG and
its embedding by the building SavedModel. The client sends the probe through the URL and version
it queries and refuses a server whose embedding of it differs by more than float noise
(`PROBE_ATOL`): that catches another model behind the same version number and dimension, other
head weights and other preprocessing, with TF Serving or the stand-in alike.

`build --out DIR` writes the new index into a hidden folder beside DIR and swaps it in at the end
(`diva_tf.core.atomic.swap_in`): a killed build leaves the previous index readable, and the next
build removes a dead build's leftovers. DIR must be an index folder or empty (nothing else is replaced).
`add` and `remove` rewrite the index the same way.

The faiss index is `--index_type`, an `index_factory` string (`PRESETS` lists the documented ones):
`Flat` (default) is the exact `IndexFlatIP`, faiss label = position = item id, as indexes built
before index types existed. Other types keep stable item ids (their own for IVF, an `IndexIDMap2`
around the others), so `remove` never renumbers. Trained types (IVF, PQ, OPQ) train on a seeded
sample of the gallery. Search-time knobs (`nprobe` for IVF, `efSearch` for HNSW, `k_factor_rf` for
re-ranking types: k x k_factor candidates re-ranked with the full vectors) are stored in the
manifest and applied by `RetrievalIndex.read`. `read` maps the index file into memory
(`IO_FLAG_MMAP_IFC`): vectors, codes and inverted lists are paged in as searches touch them; an
HNSW graph is still read whole.

Query files that cannot be read or decoded are reported one line each (`FILE: why`); the other
queries are still answered, and the command then exits 2.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json
import os
import re
import shutil

import numpy as np

from diva_tf.core.atomic import clean_stale, owned_tempdir, single_writer, swap_in
from diva_tf.core.errors import DivaError
from diva_tf.core.renamed import renamed_keywords

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
MANIFEST_FILE = "manifest.json"
INDEX_FILES = (INDEX_FILE, ITEMS_FILE, MANIFEST_FILE)
PROBE_SIZE = 32
# Max abs difference of a served probe embedding (unit norm) from the stored one. The same
# SavedModel on other hardware (GPU, TF32) stays well below; other weights move it by ~1e-1.
PROBE_ATOL = 1e-3
DEFAULT_INDEX_TYPE = "Flat"
# Documented index types by gallery size (docs/indexes.md has the measured trade-offs).
PRESETS = {
    "Flat": "exact; up to ~100k items (a full scan per query, 2 KB per 512-d item)",
    "HNSW32": "approximate graph; 100k to a few million items when memory holds the vectors",
    "IVF1024,Flat": "inverted lists of full vectors; 100k to 1M items, cheaper to grow than HNSW",
    "IVF4096,PQ64": "compressed (72 B per item); 1M+ items in little memory, lower recall",
    "IVF4096,PQ128x4fs,RFlat": "4-bit codes scanned fast, the best candidates re-ranked with "
                               "the full vectors; 1M items at high recall",
}
DEFAULT_TRAIN_SIZE = 100_000
HNSW_LEVEL_SEED = 12345  # faiss's HNSW constructor seeds its node-level generator with it
DEFAULT_SEED = 0
# Search-time knobs: manifest key -> (default, index kind it needs, flag).
KNOBS = {"nprobe": (16, "IVF", "--nprobe"), "efSearch": (64, "HNSW", "--ef_search"),
         "k_factor_rf": (64, "RFlat", "--k_factor")}


class IndexMismatchError(DivaError, RuntimeError):
    """The index was built by another SavedModel than the one it is queried with."""


class IndexDataError(DivaError, RuntimeError):
    """An index folder that cannot be read, --out that must not be replaced, or index settings
    (type, knobs, ids) that do not fit the index."""


@dataclasses.dataclass(frozen=True)
class Hit:
    id: int
    path: str
    label: str | None
    score: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """One query file's answer: its hits, best first, or why it could not be searched (then
    `error` is one line and `hits` is empty)."""
    query: str
    hits: tuple[Hit, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---- inputs ---------------------------------------------------------------------------------
def find_images(root: str) -> list[str]:
    """Image files under root, as the dataset loaders list them (sorted, hidden files skipped)."""
    from diva_tf.data.imagefiles import list_images

    if not os.path.isdir(root):
        raise FileNotFoundError(f"--images {root}: no such folder")
    return list_images(root)


def folder_label(root: str, path: str) -> str | None:
    """Class-per-folder label: the first folder below root (None for files directly in root)."""
    parts = os.path.relpath(path, root).split(os.sep)
    return parts[0] if len(parts) > 1 else None


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def tf_reason(message: str) -> str:
    """The one line of a TensorFlow error message that says what went wrong (the line before
    TF's `[[{{node ...}}]]` trailer, without its `{{function_node ...}}` prefix)."""
    text = message.split("[[", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[-1] if lines else message)


def embed_files(export, paths: list[str],
                batch_size: int = 64) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """(embeddings [m, d], indices into `paths` that were embedded, {index: why not} for files
    that could not be read or decoded). A batch holding an undecodable file is retried image by
    image, so one bad file costs only itself."""
    import tensorflow as tf

    failed, kept, chunks = {}, [], []

    def embed(batch: list) -> None:  # [(index, bytes)]
        try:
            chunks.append(export.embed_bytes([data for _, data in batch]))
            kept.extend(i for i, _ in batch)
        except tf.errors.InvalidArgumentError:
            for i, data in batch:
                try:
                    chunks.append(export.embed_bytes([data]))
                    kept.append(i)
                except tf.errors.InvalidArgumentError as e:
                    failed[i] = f"not a decodable image ({tf_reason(e.message)})"

    batch = []  # files are read batch by batch: memory holds one batch of encoded images
    for i, path in enumerate(paths):
        try:
            batch.append((i, read_bytes(path)))
        except OSError as e:
            failed[i] = e.strerror or str(e)
        if len(batch) == batch_size:
            embed(batch)
            batch = []
    if batch:
        embed(batch)
    dim = export.manifest["embedding_dim"]
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(embeddings, dtype=np.float32), kept, failed


# ---- the probe: a fixed image whose embedding identifies the model over REST ------------------
def probe_image() -> bytes:
    """A fixed 32x32 RGB noise PNG (its bytes are stored in the manifest, so the generator
    never has to reproduce them)."""
    import tensorflow as tf

    pixels = np.random.RandomState(0).randint(0, 256, (PROBE_SIZE, PROBE_SIZE, 3)).astype(np.uint8)
    return tf.io.encode_png(pixels).numpy()


def make_probe(export) -> dict:
    """The manifest's probe: the PNG (base64) and its embedding by `export`."""
    png = probe_image()
    return {"png_b64": base64.b64encode(png).decode("ascii"),
            "embedding": export.embed_bytes([png])[0].tolist()}


def probe_bytes(manifest: dict, index_dir: str) -> bytes:
    """The probe PNG of an index, for a client to send through the server it queries."""
    if "probe" not in manifest:
        raise IndexMismatchError(
            f"index {index_dir} has no probe embedding (built by an older diva_tf), so a served "
            "model cannot be checked against it; rebuild it with `python -m diva_tf.index build`")
    return base64.b64decode(manifest["probe"]["png_b64"])


# ---- identity of the embedding model --------------------------------------------------------
def model_identity(export) -> dict:
    """What an index must match: the exact SavedModel and the embedding it produces."""
    from diva_tf.serving.export import fingerprint

    m = export.manifest
    return {"saved_model": os.path.abspath(export.version_dir), "model_version": m["model_version"],
            "fingerprint": fingerprint(export.version_dir), "embedding_dim": m["embedding_dim"],
            "heads": m["heads"], "head_weights": m["head_weights"], "metrics": m.get("metrics")}


def check_identity(built: dict, given: dict, index_dir: str) -> None:
    """Raise IndexMismatchError unless `given` is the SavedModel the index was built with."""
    if built["fingerprint"] == given["fingerprint"]:
        return
    diffs = [f"{k}: index {built.get(k)!r} vs given {given.get(k)!r}"
             for k in ("saved_model", "model_version", "embedding_dim", "head_weights",
                       "fingerprint")
             if built.get(k) != given.get(k)]
    raise IndexMismatchError(
        f"index {index_dir} was built with another SavedModel ({'; '.join(diffs)}); its embeddings "
        f"are not comparable. Query it with {built['saved_model']} or rebuild it with "
        f"`python -m diva_tf.index build --export_dir {given['saved_model']} ...`")


def served_mismatch(manifest: dict, model_version, probe_embedding, index_dir: str,
                    atol: float = PROBE_ATOL) -> str | None:
    """Why a model answering as `model_version` with `probe_embedding` did not build the index
    (None if it did)."""
    built = manifest["model"]
    dim = len(probe_embedding)
    if str(built["model_version"]) != str(model_version) or built["embedding_dim"] != dim:
        return (f"index {index_dir} was built with model version {built['model_version']} "
                f"(embedding dim {built['embedding_dim']}) but the server answered with version "
                f"{model_version} (embedding dim {dim}); rebuild the index")
    stored = np.asarray(manifest["probe"]["embedding"], np.float64)
    diff = float(np.max(np.abs(np.asarray(probe_embedding, np.float64) - stored)))
    if not diff <= atol:  # also refuses NaN
        return (f"index {index_dir} was built with another model than the one served as version "
                f"{model_version}: its probe image embeds {diff:.3g} away (max abs difference, "
                f"tolerance {atol:g}); serve {built['saved_model']} or rebuild the index from the "
                "served SavedModel")
    return None


def check_served(manifest: dict, model_version, probe_embedding, index_dir: str,
                  atol: float = PROBE_ATOL) -> None:
    """Check a REST server against the index: the version and dimension it answered with, and
    its embedding of the probe image (`probe_bytes`) against the one stored at build time."""
    why = served_mismatch(manifest, model_version, probe_embedding, index_dir, atol)
    if why:
        raise IndexMismatchError(why)


def check_export(manifest: dict, export, index_dir: str) -> None:
    """`export` may extend the index if it is the SavedModel that built it, or one that embeds
    the probe the same (a re-export of the same weights); else IndexMismatchError."""
    built, given = manifest["model"], model_identity(export)
    if built["fingerprint"] == given["fingerprint"]:
        return
    if "probe" in manifest:
        probe = export.embed_bytes([probe_bytes(manifest, index_dir)])[0]
        if served_mismatch(manifest, given["model_version"], probe, index_dir) is None:
            return
    check_identity(built, given, index_dir)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---- faiss index types ------------------------------------------------------------------------
def faiss_reason(error: RuntimeError) -> str:
    """The message of a faiss C++ exception without its `Error in <signature> at file:line:`."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", text)


def ivf_of(index):
    """The IVF index inside `index` (through IDMap / pre-transforms), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def new_index(index_type: str, dim: int):
    """An empty faiss inner-product index of `index_type`. `Flat` is the plain IndexFlatIP
    (labels are positions); IVF types keep the ids they are given; other types are wrapped in an
    IndexIDMap2 so that items keep their ids through `remove`."""
    import faiss

    if index_type == DEFAULT_INDEX_TYPE:
        return faiss.IndexFlatIP(dim)
    try:
        index = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexDataError(f"--index_type {index_type!r}: not a faiss index_factory string for "
                             f"{dim}-d vectors ({faiss_reason(e)}); presets: "
                             f"{', '.join(PRESETS)}") from None
    if ivf_of(index) is None or isinstance(index, faiss.IndexRefine):  # no add_with_ids
        index = faiss.IndexIDMap2(index)
    return index


def search_params(index, index_type: str, nprobe: int | None = None,
                  ef_search: int | None = None, stored: dict | None = None,
                  k_factor: int | None = None) -> dict:
    """The knobs `index` searches with: `stored` (a manifest's), overridden by the arguments,
    defaults (KNOBS) for the knobs its type has. IndexDataError for a knob the type lacks or a
    value out of range."""
    import faiss

    given = {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search),
                               ("k_factor_rf", k_factor)) if v is not None}
    params = {}
    for name, (default, kind, flag) in KNOBS.items():
        value = given.get(name, (stored or {}).get(name))
        try:
            faiss.ParameterSpace().set_index_parameter(index, name, default)
        except RuntimeError:
            if name in given:
                raise IndexDataError(f"{flag} applies to {kind} indexes only, not "
                                     f"--index_type {index_type}") from None
            continue
        params[name] = default if value is None else value
        if isinstance(params[name], bool) or not isinstance(params[name], int) or params[name] < 1:
            raise IndexDataError(f"{flag}={params[name]}: must be an integer >= 1")
    ivf = ivf_of(index)
    if ivf is not None and params["nprobe"] > ivf.nlist:
        if "nprobe" in given:
            raise IndexDataError(f"--nprobe={params['nprobe']}: the index has only {ivf.nlist} "
                                 "inverted lists")
        params["nprobe"] = ivf.nlist
    return params


def apply_search_params(index, params: dict) -> None:
    import faiss

    for name, value in params.items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)


def train(index, vectors: np.ndarray, index_type: str, size: int, seed: int) -> dict | None:
    """Train `index` on `size` gallery vectors drawn without replacement (seeded); what it was
    trained on, or None for types that need no training."""
    if index.is_trained:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), min(size, len(vectors)),
                                                      replace=False))
    try:
        index.train(vectors[rows])
    except RuntimeError as e:
        raise IndexDataError(f"--index_type {index_type}: cannot train on {len(rows)} vectors "
                             f"({faiss_reason(e)}); index more images or choose a smaller type "
                             "(presets: see docs/indexes.md)") from None
    return {"size": int(len(rows)), "seed": seed}


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray):
    """`index` with `vectors` added under `ids` (a plain IndexFlatIP stays plain while ids are
    positions, as they are until the first removal)."""
    import faiss

    if isinstance(index, faiss.IndexFlat):
        if np.array_equal(ids, np.arange(index.ntotal, index.ntotal + len(ids))):
            index.add(vectors)
            return index
        index = with_id_map(index)
    index.add_with_ids(vectors, ids.astype(np.int64))
    return index


def with_id_map(flat):
    """A plain IndexFlatIP (labels = positions) as an IndexIDMap2 with the same labels."""
    import faiss

    mapped = faiss.IndexIDMap2(faiss.IndexFlatIP(flat.d))
    mapped.add_with_ids(flat.reconstruct_n(0, flat.ntotal), np.arange(flat.ntotal, dtype=np.int64))
    return mapped


def remove_vectors(index, ids: np.ndarray):
    """`index` without `ids`. Types that cannot remove (HNSW) get their structure rebuilt from
    the vectors they store, in the order they were added, i.e. as a build of the rest would."""
    import faiss

    if isinstance(index, faiss.IndexFlat):
        index = with_id_map(index)
    try:
        index.remove_ids(ids.astype(np.int64))
        return index
    except RuntimeError:
        pass
    inner = faiss.downcast_index(index.index)
    labels = faiss.vector_to_array(index.id_map)
    keep = ~np.isin(labels, ids)
    vectors = inner.reconstruct_n(0, inner.ntotal)[keep]
    fresh = faiss.clone_index(inner)  # same type, training and parameters
    fresh.reset()
    if hasattr(fresh, "hnsw"):  # node levels drawn as a new index draws them
        fresh.hnsw.rng = faiss.RandomGenerator(HNSW_LEVEL_SEED)
    rebuilt = faiss.IndexIDMap2(fresh)
    rebuilt.add_with_ids(vectors, labels[keep])
    return rebuilt


def read_faiss(path: str, mmap: bool):
    import faiss

    return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0)


# ---- the index ------------------------------------------------------------------------------
@dataclasses.dataclass
class RetrievalIndex:
    index: object  # a faiss index whose labels are item ids
    items: list[dict]  # [{"id", "path", "label"}]
    manifest: dict
    index_dir: str = ""

    @classmethod
    def read(cls, index_dir: str, nprobe: int | None = None, ef_search: int | None = None,
             mmap: bool = True, k_factor: int | None = None) -> "RetrievalIndex":
        """Load without checking the model (see `open_index`), memory-mapped and read-only
        unless `mmap` is False (faiss aborts the process on adding to a mapped index: `add` and
        `remove` read with mmap=False); search knobs from the manifest unless given.
        IndexDataError if the folder is not a complete index."""
        if not os.path.isdir(index_dir):
            parent, name = os.path.split(os.path.abspath(index_dir))
            try:
                clean_stale(parent, name)  # puts back an index whose rebuild died mid-swap
            except OSError:
                pass
            if not os.path.isdir(index_dir):
                raise IndexDataError(f"--index {index_dir}: no such index folder")
        manifest = _read_json(index_dir, MANIFEST_FILE, dict)
        items = _read_json(index_dir, ITEMS_FILE, list)
        try:
            index = read_faiss(os.path.join(index_dir, INDEX_FILE), mmap)
        except RuntimeError as e:
            raise IndexDataError(f"index {index_dir}: cannot read {INDEX_FILE} "
                                 f"({str(e).strip().splitlines()[-1]}); rebuild the index") from None
        if "model" not in manifest or len(items) != index.ntotal:
            raise IndexDataError(f"index {index_dir}: {ITEMS_FILE} lists {len(items)} images, "
                                 f"{INDEX_FILE} holds {index.ntotal} vectors, {MANIFEST_FILE} "
                                 f"names {'a' if 'model' in manifest else 'no'} model: the "
                                 "files do not belong together; rebuild the index")
        index_type = manifest.get("index_type", DEFAULT_INDEX_TYPE)
        apply_search_params(index, search_params(index, index_type, nprobe, ef_search,
                                                 manifest.get("search"), k_factor))
        return cls(index, items, manifest, index_dir)

    @functools.cached_property
    def by_id(self) -> dict[int, dict]:
        return {item["id"]: item for item in self.items}

    def search(self, embeddings: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-k hits (highest cosine similarity first) for each row of `embeddings`."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if queries.shape[1] != self.index.d:
            raise IndexMismatchError(f"query dim {queries.shape[1]} != index dim {self.index.d}")
        if not self.index.ntotal:
            return [[] for _ in queries]
        scores, ids = self.index.search(queries, min(k, self.index.ntotal))
        return [[Hit(int(i), self.by_id[i]["path"], self.by_id[i]["label"], float(s))
                 for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]


def _read_json(index_dir: str, name: str, kind: type):
    path = os.path.join(index_dir, name)
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as e:
        raise IndexDataError(f"index {index_dir}: cannot read {name} ({e.strerror}); rebuild "
                             "the index") from None
    except ValueError as e:
        raise IndexDataError(f"index {index_dir}: {name} is not valid JSON ({e}; truncated?); "
                             "rebuild the index") from None
    if not isinstance(value, kind):
        raise IndexDataError(f"index {index_dir}: {name} holds a JSON {type(value).__name__}, "
                             f"not a {kind.__name__}; rebuild the index")
    return value


def open_index(index_dir: str, export) -> RetrievalIndex:
    """Load an index and make sure `export` (a diva_tf.serving.export.LoadedExport) built it."""
    index = RetrievalIndex.read(index_dir)
    check_identity(index.manifest["model"], model_identity(export), index_dir)
    return index


def check_replaceable(out_dir: str) -> None:
    """A build may replace out_dir only if it is missing, empty or an index folder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise IndexDataError(f"--out {out_dir} is a file, not an index folder")
    others = sorted(set(os.listdir(out_dir)) - set(INDEX_FILES)) if os.path.isdir(out_dir) else []
    if others:
        raise IndexDataError(f"--out {out_dir} holds files that are not part of an index "
                             f"({', '.join(others[:3])}); refusing to replace it: choose another "
                             "--out")


def write_index(out_dir: str, index, items: list[dict], manifest: dict) -> None:
    """Write the three files into a hidden folder beside out_dir and swap it in (the previous
    index stays whole until the final renames); leftovers of dead builds are removed first."""
    import faiss

    parent, name = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    clean_stale(parent, name)
    tmp = owned_tempdir(parent, "tmp", name)
    try:
        faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
        for file, obj in ((ITEMS_FILE, items), (MANIFEST_FILE, manifest)):
            with open(os.path.join(tmp, file), "w") as f:
                json.dump(obj, f, indent=1)
        swap_in(tmp, os.path.abspath(out_dir), replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embed_gallery(export, images_dir: str, labels_from_folders: bool, batch_size: int,
                  first_id: int = 0, known: frozenset = frozenset()):
    """(embeddings, items numbered from first_id) of the images under images_dir whose absolute
    path is not in `known`; unreadable files are skipped and logged."""
    from absl import logging

    root = os.path.abspath(images_dir)
    paths = find_images(images_dir)
    if not paths:
        raise FileNotFoundError(f"no image files under {images_dir}")
    paths = [p for p in paths if os.path.abspath(p) not in known]
    embeddings, kept, failed = embed_files(export, paths, batch_size)
    if failed:
        logging.warning("skipped %d of %d image(s) that could not be read or decoded, e.g. %s",
                        len(failed), len(paths),
                        "; ".join(f"{paths[i]}: {why}" for i, why in sorted(failed.items())[:3]))
    kept_paths = [os.path.abspath(paths[i]) for i in kept]
    items = [{"id": n, "path": p, "label": folder_label(root, p) if labels_from_folders else None}
             for n, p in enumerate(kept_paths, first_id)]
    return embeddings, items, len(failed)


@renamed_keywords(saved_model="export_dir", seed="sample_seed")
def build_index(export_dir: str, images_dir: str, out_dir: str, labels_from_folders: bool = False,
                batch_size: int = 64, index_type: str = DEFAULT_INDEX_TYPE,
                nprobe: int | None = None, ef_search: int | None = None,
                train_size: int = DEFAULT_TRAIN_SIZE, sample_seed: int = DEFAULT_SEED,
                k_factor: int | None = None) -> RetrievalIndex:
    """Embed every image under images_dir and write index.faiss, items.json and manifest.json.
    `index_type` is a faiss index_factory string (see PRESETS); trained types train on
    `train_size` gallery vectors drawn with `sample_seed`. One writer at a time per `out_dir`."""
    with single_writer(out_dir, "index"):
        return _build_index(export_dir, images_dir, out_dir, labels_from_folders, batch_size,
                            index_type, nprobe, ef_search, train_size, sample_seed, k_factor)


def _build_index(export_dir, images_dir, out_dir, labels_from_folders, batch_size, index_type,
                 nprobe, ef_search, train_size, seed, k_factor) -> RetrievalIndex:
    from absl import logging

    from diva_tf.serving.export import load_export

    check_replaceable(out_dir)
    if train_size < 1:
        raise IndexDataError(f"--train_size={train_size}: must be at least 1")
    export = load_export(export_dir)
    index = new_index(index_type, export.manifest["embedding_dim"])
    # refuse a knob the type lacks before embedding
    params = search_params(index, index_type, nprobe, ef_search, k_factor=k_factor)
    embeddings, items, skipped = embed_gallery(export, images_dir, labels_from_folders, batch_size)
    trained = train(index, embeddings, index_type, train_size, seed)
    index = add_vectors(index, embeddings, np.array([i["id"] for i in items], np.int64))
    apply_search_params(index, params)
    manifest = {"model": model_identity(export), "probe": make_probe(export),
                "images": os.path.abspath(images_dir), "count": len(items), "skipped": skipped,
                "labels_from_folders": labels_from_folders,
                "metric": "inner_product (cosine on unit-norm embeddings)",
                "built_at": _now(), "index_type": index_type}
    if params:
        manifest["search"] = params
    if trained:
        manifest["train"] = trained
    write_index(out_dir, index, items, manifest)
    logging.info("indexed %d image(s) from %s into %s (%s, dim %d, model version %s)", len(items),
                 images_dir, out_dir, index_type, embeddings.shape[1],
                 manifest["model"]["model_version"])
    return RetrievalIndex(index, items, manifest, out_dir)


@renamed_keywords(saved_model="export_dir")
def add_images(index_dir: str, export_dir: str, images_dir: str,
               labels_from_folders: bool = False, batch_size: int = 64) -> RetrievalIndex:
    """Embed the images under images_dir that the index does not hold yet (by path) with the
    SavedModel that built it (fingerprint or probe checked) and add them under new ids; the
    index is rewritten atomically. A trained index keeps its training (new items are encoded
    with it)."""
    with single_writer(index_dir, "index"):
        return _add_images(index_dir, export_dir, images_dir, labels_from_folders, batch_size)


def _add_images(index_dir, export_dir, images_dir, labels_from_folders, batch_size):
    from absl import logging

    from diva_tf.serving.export import load_export

    old = RetrievalIndex.read(index_dir, mmap=False)
    export = load_export(export_dir)
    check_export(old.manifest, export, index_dir)
    first_id = old.manifest.get("next_id", max((i["id"] for i in old.items), default=-1) + 1)
    embeddings, items, skipped = embed_gallery(export, images_dir, labels_from_folders,
                                               batch_size, first_id,
                                               frozenset(i["path"] for i in old.items))
    index = add_vectors(old.index, embeddings, np.array([i["id"] for i in items], np.int64))
    manifest = dict(old.manifest, count=len(old.items) + len(items),
                    skipped=old.manifest.get("skipped", 0) + skipped,
                    next_id=first_id + len(items), updated_at=_now())
    write_index(index_dir, index, old.items + items, manifest)
    logging.info("added %d image(s) from %s to %s (now %d)", len(items), images_dir, index_dir,
                 manifest["count"])
    return RetrievalIndex.read(index_dir)


def remove_items(index_dir: str, ids: list[int]) -> RetrievalIndex:
    """Remove items by id (items.json's `id`, a hit's `id`); the index is rewritten atomically
    and the other items keep their ids."""
    with single_writer(index_dir, "index"):
        return _remove_items(index_dir, ids)


def _remove_items(index_dir, ids):
    from absl import logging

    old = RetrievalIndex.read(index_dir, mmap=False)
    unknown = sorted(set(ids) - set(old.by_id))
    if unknown:
        raise IndexDataError(f"--ids: index {index_dir} has no item with id "
                             f"{', '.join(map(str, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}")
    gone = set(ids)
    index = remove_vectors(old.index, np.array(sorted(gone), np.int64))
    items = [i for i in old.items if i["id"] not in gone]
    next_id = old.manifest.get("next_id", max(old.by_id, default=-1) + 1)
    manifest = dict(old.manifest, count=len(items), next_id=next_id, updated_at=_now())
    write_index(index_dir, index, items, manifest)
    logging.info("removed %d item(s) from %s (now %d)", len(gone), index_dir, len(items))
    return RetrievalIndex.read(index_dir)


@renamed_keywords(saved_model="export_dir")
def search_images(index_dir: str, export_dir: str, images: list[str], k: int = 5,
                  nprobe: int | None = None, ef_search: int | None = None,
                  k_factor: int | None = None) -> list[SearchResult]:
    """Embed query image files with the SavedModel the index was built with, and search (knobs:
    the manifest's unless given). One SearchResult per query, in order: its hits, or why the file
    could not be read or decoded."""
    from diva_tf.serving.export import load_export

    index = RetrievalIndex.read(index_dir, nprobe, ef_search, k_factor=k_factor)
    export = load_export(export_dir)
    check_identity(index.manifest["model"], model_identity(export), index_dir)
    embeddings, kept, failed = embed_files(export, images)
    found = dict(zip(kept, index.search(embeddings, k) if kept else []))
    return [SearchResult(query, tuple(found[i])) if i in found
            else SearchResult(query, error=failed[i]) for i, query in enumerate(images)]


def format_hits(query: str, hits: list[Hit]) -> str:
    lines = [query]
    lines += [f"  {rank}. {h.score:.4f}  {h.label if h.label is not None else '-'}  {h.path}"
              for rank, h in enumerate(hits, 1)]
    return "\n".join(lines)
