#!/usr/bin/env python3
"""REST client for a served diva_tf export (TF Serving, or `python -m diva_tf.serve` on KServe).

    python export/client.py --url http://localhost:8501/v1/models/diva:predict IMAGE...
    python export/client.py --url ... --format columnar --signature serving_default IMAGE...
    python export/client.py --url ... --index runs/index --k 5 IMAGE...

Sends each image file's bytes as {"b64": ...} to the `serving_default` signature (input
`image_bytes`) and prints each embedding's shape and first values, or, with --index, the nearest
indexed images: searched by the server's `<name>-retrieval` model when it has one (`python -m
diva_tf.serve --index`), else in the local index folder. TF Serving needs only `:predict` and the
status route. Standard library only (argparse, urllib), so it can be copied anywhere; --index
additionally needs diva_tf and faiss, imported only then.

With --index the client first checks that the server runs the model the index was built with:
the version it serves and the embedding size must match the index manifest, and the index's probe
image, sent through the same URL and version, must embed as it did at build time (within
--probe_atol; see diva_tf.serving.index). A mismatch is refused: embeddings of two models are not
comparable, and the neighbours would be wrong.

A query file that cannot be read, or that the server refuses (e.g. not an image), gets one line
`error: FILE: why` on stderr; the other files are still answered. Exit code: 0 all answered,
1 the server could not be reached or refused the request, 2 a query file, the index, or the
served model (not the index's) was wrong.
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

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def reason(message: str) -> str:
    """The line of a (TensorFlow) error message that says what went wrong: the last line before
    TF's `[[{{node ...}}]]` trailer, without its `{{function_node ...}}` prefix."""
    lines = [line.strip() for line in message.split("[[", 1)[0].splitlines() if line.strip()]
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[-1] if lines else message)


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
        raise ClientError(f"HTTP {e.code} from {url}: {reason(str(message))}", e.code) from None
    except urllib.error.URLError as e:
        raise ClientError(f"cannot reach {url}: {e.reason}") from None
    except ValueError as e:
        raise ClientError(f"{url} answered with something that is not JSON ({e})") from None
    except OSError as e:  # timeout, connection reset while reading
        raise ClientError(f"no complete answer from {url}: {e}") from None


def embeddings_from_reply(reply: dict, fmt: str, output: str = OUTPUT) -> list[list[float]]:
    """The named output of a predict reply, one row per image (row or columnar format)."""
    if fmt == "row":
        rows = reply["predictions"]
        return [row[output] if isinstance(row, dict) else row for row in rows]
    outputs = reply["outputs"]
    return outputs[output] if isinstance(outputs, dict) else outputs


def predict(url: str, images: list[bytes], signature: str = "serving_default", fmt: str = "row",
            timeout: float = 60.0) -> list[list[float]]:
    reply = call(url, predict_payload(images, signature, fmt), timeout)
    try:
        return embeddings_from_reply(reply, fmt)
    except (KeyError, TypeError) as e:
        raise ClientError(f"{url} answered without an {OUTPUT!r} output ({e!r}); is it a diva_tf "
                          "export?") from None


def search(url: str, images: list[bytes], k: int, timeout: float = 60.0) -> list[list[dict]]:
    """The k nearest items ({"id", "path", "label", "score"}) of each image, by the server's
    retrieval model at `url`."""
    reply = call(url, {"instances": predict_payload(images, "", "row")["instances"], "k": k},
                 timeout)
    return reply["predictions"]


def each(answer, images: list[bytes]) -> list:
    """`answer(images)`'s result, or the ClientError of a refused image, per image. One request
    for all; if the server refuses it as bad input (HTTP 400, e.g. a file that is not an image),
    one request per image, so a bad file costs only its own answer."""
    try:
        return answer(images)
    except ClientError as e:
        if e.status != 400:
            raise
        if len(images) == 1:
            return [e]
    return [each(answer, [image])[0] for image in images]


def predict_each(url: str, images: list[bytes], signature: str = "serving_default",
                 fmt: str = "row", timeout: float = 60.0) -> list:
    """One embedding, or the ClientError of a refused image, per image (see `each`)."""
    return each(lambda batch: predict(url, batch, signature, fmt, timeout), images)


def retrieval_url(predict_url: str) -> str:
    """The predict URL of the retrieval model served beside the model of `predict_url`."""
    base = re.fullmatch(r"(.*/v1/models/[^/:]+)(?:/versions/\d+)?:predict", predict_url).group(1)
    return f"{base}-retrieval:predict"


def has_model(predict_url: str, timeout: float = 60.0) -> bool:
    """Whether the server answers the status route of the model of `predict_url` (404: no)."""
    try:
        call(predict_url.rsplit(":", 1)[0], timeout=timeout)
    except ClientError as e:
        if e.status == 404:
            return False
        raise
    return True


def read_files(paths: list[str]) -> list:
    """Each file's bytes, or why it cannot be read."""
    found = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                found.append(f.read())
        except OSError as e:
            found.append(e.strerror or str(e))
    return found


def pin_version(predict_url: str, timeout: float = 60.0) -> tuple[str, str]:
    """(predict URL naming an explicit version, that version): the served latest unless the URL
    already names one, so embeddings and the version checked against an index agree."""
    m = re.fullmatch(r"(.*/v1/models/[^/:]+)(?:/versions/(\d+))?:predict", predict_url)
    if not m:
        raise ClientError(f"{predict_url} is not a .../v1/models/<name>[/versions/<v>]:predict URL")
    base, version = m.groups()
    if version is None:
        reply = call(base, timeout=timeout)
        available = [s.get("version") for s in reply.get("model_version_status", [])
                     if s.get("state") == "AVAILABLE"]
        if not available:
            raise ClientError(f"{base} has no AVAILABLE version: {json.dumps(reply)[:200]}")
        version = max(available, key=int)
    return f"{base}/versions/{version}:predict", version


def _import_index():
    try:
        import diva_tf.serving.index as index
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import diva_tf.serving.index as index
    return index


def at_least(low, kind):
    """An argparse type: `kind(text)`, refused below `low`."""
    def parse(text):
        value = kind(text)
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {low}")
        return value
    return parse


def check_server(index_lib, index, url: str, version: str, args) -> None:
    """Send the index's probe image through `url`; IndexMismatchError unless the served model
    embeds it as the model that built the index did."""
    probe = index_lib.probe_bytes(index.manifest, args.index)
    served = predict(url, [probe], args.signature, args.format, args.timeout)[0]
    atol = index_lib.PROBE_ATOL if args.probe_atol is None else args.probe_atol
    index_lib.check_served(index.manifest, version, served, args.index, atol)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG files")
    parser.add_argument("--url", default="http://localhost:8501/v1/models/diva:predict")
    parser.add_argument("--format", choices=("row", "columnar"), default="row",
                        help='"instances" (row) or "inputs" (columnar) request')
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--index", help="index folder from `python -m diva_tf.index build`")
    parser.add_argument("--k", type=at_least(1, int), default=5,
                        help="neighbours per image with --index")
    parser.add_argument("--probe_atol", type=at_least(0.0, float), default=None,
                        help="with --index: largest max-abs difference of the served probe "
                             "embedding from the index's (default diva_tf.serving.index.PROBE_ATOL, "
                             "above float noise of the same model on other hardware)")
    parser.add_argument("--values", type=int, default=5, help="embedding values printed")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    files = read_files(args.images)
    errors = {i: why for i, why in enumerate(files) if isinstance(why, str)}
    readable = [i for i in range(len(files)) if i not in errors]
    embeddings, index, searched = {}, None, None
    try:
        url = args.url
        if args.index:
            index_lib = _import_index()
            index = index_lib.RetrievalIndex.read(args.index)
            url, version = pin_version(args.url, args.timeout)
            check_server(index_lib, index, url, version, args)
            searched = retrieval_url(args.url)
            if not has_model(searched, args.timeout):
                searched = None
        if searched:
            print(f"searching server-side with {searched} (the served model matches "
                  f"{args.index})", file=sys.stderr)
            answers = each(lambda batch: search(searched, batch, args.k, args.timeout),
                           [files[i] for i in readable]) if readable else []
        else:
            answers = predict_each(url, [files[i] for i in readable], args.signature,
                                   args.format, args.timeout) if readable else []
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # diva_tf.serving.index.IndexMismatchError / IndexDataError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, answer in zip(readable, answers):
        if isinstance(answer, ClientError):
            errors[i] = str(answer)
        else:
            embeddings[i] = answer
    hits = {}
    if searched:
        hits = {i: [index_lib.Hit(**h) for h in found] for i, found in embeddings.items()}
    elif index is not None and embeddings:
        hits = dict(zip(embeddings, index.search(list(embeddings.values()), args.k)))
    for i, path in enumerate(args.images):
        if i in errors:
            print(f"error: {path}: {errors[i]}", file=sys.stderr)
        elif index is not None:
            print(index_lib.format_hits(path, hits[i]))
        else:
            head = ", ".join(f"{v:.5f}" for v in embeddings[i][: args.values])
            print(f"{path}: embedding shape ({len(embeddings[i])},) [{head}, ...]")
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
