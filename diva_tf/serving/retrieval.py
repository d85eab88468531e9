"""`diva-retrieval`: images in, for each the k nearest indexed items out, on the model server.

    POST /v1/models/diva-retrieval:predict  {"instances": [{"b64": ...}, ...], "k": 5}
    -> {"predictions": [[{"id", "label", "score", "path"}, ... k], ...]}

Queries are embedded by the served `EmbeddingModel` (same process, same pixel limits) and searched
in a `diva_tf.serving.index` index. At load the index must have been built by the served version
(its fingerprint) and the served model must embed the index's probe image as it did at build
time; otherwise the server refuses to start: neighbours from another model's embeddings are wrong.
"""

from __future__ import annotations

import dataclasses
import threading

import kserve
import numpy as np

from diva_tf.serving import rest_json
from diva_tf.serving.errors import BadRequest
from diva_tf.serving.index import (IndexDataError, IndexMismatchError, check_served, open_index,
                                   probe_bytes)
from diva_tf.serving.server import (EmbeddingModel, ServeError, ensure_loaded, in_thread, install,
                                    load_in_background, request_doc)

DEFAULT_K, MAX_K = 5, 100


def request_k(doc: dict, max_k: int) -> int:
    k = doc.get("k", min(DEFAULT_K, max_k))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadRequest(f"'k' must be an integer in [1, {max_k}] (--max_k), got "
                         f"{str(k)[:40]}")
    return k


class RetrievalModel(kserve.Model):
    """k nearest indexed items of query images, embedded by `embedder`."""

    def __init__(self, name: str, embedder: EmbeddingModel, index_dir: str, max_k: int = MAX_K):
        super().__init__(name)
        self.embedder, self.index_dir, self.max_k = embedder, index_dir, max_k
        self.index = None
        self.loaded = threading.Event()

    @property
    def limits(self):
        return self.embedder.limits

    @property
    def version(self) -> int:
        return self.embedder.version

    def load(self) -> bool:
        """Open the index and check it against the served model (ServeError if it does not
        match or cannot be read)."""
        self.embedder.loaded.wait()
        export = self.embedder.export
        try:
            self.index = open_index(self.index_dir, export)
            probe = export.embed_bytes([probe_bytes(self.index.manifest, self.index_dir)])[0]
            check_served(self.index.manifest, export.version, probe, self.index_dir)
        except (IndexMismatchError, IndexDataError) as e:
            raise ServeError(f"--index: {e}") from None
        self.ready = True
        self.loaded.set()
        return self.ready

    def __getstate__(self):
        return {"name": self.name, "embedder": self.embedder, "index_dir": self.index_dir,
                "max_k": self.max_k}

    def __setstate__(self, state):
        self.__init__(**state)
        install(kserve.model_server.app, self.limits, [self])
        load_in_background(self)

    def status(self) -> dict:
        return {**self.embedder.status(), "name": self.name, "ready": self.ready}

    async def predict(self, payload, headers=None, response_headers=None) -> dict:
        await ensure_loaded(self)
        doc = request_doc(payload)
        k = request_k(doc, self.max_k)
        fn = self.embedder.signature("")
        inputs, _ = rest_json.request_inputs({key: v for key, v in doc.items() if key != "k"},
                                             fn.structured_input_signature[1])
        (images,) = inputs.values()
        embeddings = await self.embedder.embed(list(images.flat))
        hits = await in_thread(self.index.search, np.asarray(embeddings), k)
        return {"predictions": [[dataclasses.asdict(h) for h in row] for row in hits]}
