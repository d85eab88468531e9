#!/usr/bin/env python3
"""REST client for a served diva_tf export (TF Serving, or the `diva_tf.tools.serve` stand-in).

    python export/client.py --url http://localhost:8501/v1/models/diva:predict IMAGE...
    python export/client.py --url ... --format columnar --signature serving_default IMAGE...
    python export/client.py --url ... --index runs/index --k 5 IMAGE...

Sends each image file's bytes as {"b64": ...} to the `serving_default` signature (input
`image_bytes`) and prints each embedding's shape and first values, or, with --index, the nearest
indexed images. Standard library only (argparse, urllib), so it can be copied anywhere; --index
additionally needs diva_tf and faiss, imported only then.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request

OUTPUT = "embedding"


class ClientError(RuntimeError):
    """The server answered with an error (its {"error": ...} message) or not at all."""


def predict_payload(images: list[bytes], signature: str, fmt: str) -> dict:
    """A TF Serving predict body with binary inputs as {"b64": ...} (row or columnar format)."""
    values = [{"b64": base64.b64encode(b).decode("ascii")} for b in images]
    key = "instances" if fmt == "row" else "inputs"
    return {"signature_name": signature, key: values}


def call(url: str, payload: dict | None = None, timeout: float = 60.0) -> dict:
    """GET (payload None) or POST JSON; returns the JSON reply or raises ClientError."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body
        raise ClientError(f"HTTP {e.code} from {url}: {message}") from None
    except urllib.error.URLError as e:
        raise ClientError(f"cannot reach {url}: {e.reason}") from None


def embeddings_from_reply(reply: dict, fmt: str, output: str = OUTPUT) -> list[list[float]]:
    """The named output of a predict reply, one row per image (row or columnar format)."""
    if fmt == "row":
        rows = reply["predictions"]
        return [row[output] if isinstance(row, dict) else row for row in rows]
    outputs = reply["outputs"]
    return outputs[output] if isinstance(outputs, dict) else outputs


def predict(url: str, images: list[bytes], signature: str = "serving_default", fmt: str = "row",
            timeout: float = 60.0) -> list[list[float]]:
    return embeddings_from_reply(call(url, predict_payload(images, signature, fmt), timeout), fmt)


def pin_version(predict_url: str, timeout: float = 60.0) -> tuple[str, str]:
    """(predict URL naming an explicit version, that version): the served latest unless the URL
    already names one, so embeddings and the version checked against an index agree."""
    m = re.fullmatch(r"(.*/v1/models/[^/:]+)(?:/versions/(\d+))?:predict", predict_url)
    if not m:
        raise ClientError(f"{predict_url} is not a .../v1/models/<name>[/versions/<v>]:predict URL")
    base, version = m.groups()
    if version is None:
        status = call(base, timeout=timeout)["model_version_status"]
        version = max((s["version"] for s in status if s["state"] == "AVAILABLE"), key=int)
    return f"{base}/versions/{version}:predict", version


def _import_index():
    try:
        import diva_tf.index as index
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import diva_tf.index as index
    return index


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG files")
    parser.add_argument("--url", default="http://localhost:8501/v1/models/diva:predict")
    parser.add_argument("--format", choices=("row", "columnar"), default="row",
                        help='"instances" (row) or "inputs" (columnar) request')
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--index", help="index folder from `python -m diva_tf.index build`")
    parser.add_argument("--k", type=int, default=5, help="neighbours per image with --index")
    parser.add_argument("--values", type=int, default=5, help="embedding values printed")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    images = []
    for path in args.images:
        with open(path, "rb") as f:
            images.append(f.read())
    try:
        url, version = pin_version(args.url, args.timeout) if args.index else (args.url, None)
        embeddings = predict(url, images, args.signature, args.format, args.timeout)
        if args.index:
            index_lib = _import_index()
            index = index_lib.RetrievalIndex.read(args.index)
            index_lib.check_served(index.manifest["model"], version, len(embeddings[0]), args.index)
            for path, hits in zip(args.images, index.search(embeddings, args.k)):
                print(index_lib.format_hits(path, hits))
            return 0
    except RuntimeError as e:  # ClientError, or diva_tf.index.IndexMismatchError
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, emb in zip(args.images, embeddings):
        head = ", ".join(f"{v:.5f}" for v in emb[: args.values])
        print(f"{path}: embedding shape ({len(emb)},) [{head}, ...]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
