"""`python -m diva_tf.serve --workers 2`: KServe's worker processes each load the export (on a
thread, while they answer KServe's liveness ping) and answer like the single-process server."""

from __future__ import annotations

import base64
import json
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from diva_tf.serving import export
from export_helpers import sample_images, start_server, tiny_config

pytestmark = pytest.mark.slow  # three processes load TensorFlow


def test_two_workers_answer_like_the_savedmodel_and_stop_on_sigterm(tmp_path):
    from diva_tf.model.network import build_embedding_model

    base = str(tmp_path / "diva")
    cfg = tiny_config(seed=4)
    export.export_model(build_embedding_model(cfg), cfg, base, version=1)
    images = list(sample_images().values())
    want = tf.saved_model.load(f"{base}/1").signatures["serving_default"](
        image_bytes=tf.constant(images))["embedding"].numpy()
    proc, url = start_server(base, "diva", "--workers", "2")
    try:
        body = json.dumps({"instances": [{"b64": base64.b64encode(e).decode()} for e in images]})
        for _ in range(6):  # connections are spread over the workers by the kernel
            req = urllib.request.Request(f"{url}/v1/models/diva:predict", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as reply:
                got = [row["embedding"] for row in json.loads(reply.read())["predictions"]]
            np.testing.assert_allclose(got, want, atol=1e-6)
    finally:
        proc.terminate()
    assert proc.wait(90) == 0
