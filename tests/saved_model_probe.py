"""Run a diva_tf export in a fresh process with TensorFlow/Keras only (never diva_tf), the way a
consumer of the SavedModel would, and save every way of calling it to an .npz file.

    python tests/saved_model_probe.py SAVED_MODEL_DIR OUT.npz IMAGE_FILE... [--images IMAGES.npy]

Keys: bytes_* (signatures['serving_default']), endpoint (loaded.serving_default), tfsm
(keras.layers.TFSMLayer), tfdata (tf.data map over encoded files), images_* (serve_images on the
float array from --images, if given).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def tf_data_embeddings(signature, files, batch_size=2):
    """Embeddings from a tf.data pipeline mapping the signature over encoded image batches."""
    ds = (tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file).batch(batch_size)
          .map(lambda b: signature(image_bytes=b)["embedding"]))
    return np.concatenate([e.numpy() for e in ds])


def main(argv):
    args, images_npy = list(argv), None
    if "--images" in args:
        i = args.index("--images")
        images_npy = args[i + 1]
        del args[i:i + 2]
    path, out, files = args[0], args[1], args[2:]
    loaded = tf.saved_model.load(path)
    serving = loaded.signatures["serving_default"]
    encoded = tf.constant([open(f, "rb").read() for f in files])
    results = {f"bytes_{k}": v.numpy() for k, v in serving(image_bytes=encoded).items()}
    results["endpoint"] = loaded.serving_default(encoded)["embedding"].numpy()
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    results["tfsm"] = layer(encoded)["embedding"].numpy()
    results["tfdata"] = tf_data_embeddings(serving, files)
    if images_npy:
        floats = loaded.signatures["serve_images"](images=tf.constant(np.load(images_npy)))
        results.update({f"images_{k}": v.numpy() for k, v in floats.items()})
    if any(m == "diva_tf" or m.startswith("diva_tf.") for m in sys.modules):
        raise SystemExit("diva_tf was imported: the probe must use TensorFlow only")
    np.savez(out, **results)
    print("ok", sorted(results))


if __name__ == "__main__":
    main(sys.argv[1:])
