"""Large encoded images -> embeddings at a fifth of `serving_default`'s memory, same numbers.

`serving_default` decodes an image (3 bytes a pixel), casts it to float32 (12 more) and then
resizes it with antialiasing: a 6000 x 6000 PNG costs ~540 MB. TensorFlow's antialiased resize
computes in float whatever its input type, so resizing the uint8 image gives the same floats
without the float copy. `LeanPath` does that (the pipeline's decoder, `data.augment.test_view`'s
resize and centre crop, with the export's `resize`/`crop`) and runs `serve_images` on the crops.
`verified` checks it against `serving_default` on test images when the model loads; the server
uses it only then, and only for requests holding a large image (small ones gain nothing).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf

LARGE_PIXELS = 1_000_000  # images at least this large take the lean path
ATOL = 1e-6


class LeanPath:
    """Encoded images -> the outputs of `serve_images`, for an export (`LoadedExport`)."""

    def __init__(self, export):
        from diva_tf.data.augment import resized_shape
        from diva_tf.data.source import decode_rgb
        from diva_tf.serving.export import IMAGES_INPUT, IMAGES_SIGNATURE

        resize, crop = export.manifest["resize"], export.manifest["crop"]
        self.model, self.input = export.root.signatures[IMAGES_SIGNATURE], IMAGES_INPUT

        def view(encoded):
            image = decode_rgb(encoded)
            shape = tf.shape(image)
            new_h, new_w = resized_shape(shape[0], shape[1], resize)
            out = tf.clip_by_value(tf.image.resize(image, tf.stack([new_h, new_w]),
                                                   method="bilinear", antialias=True), 0.0, 255.0)
            top = tf.cast(tf.round(tf.cast(new_h - crop, tf.float64) / 2), tf.int32)
            left = tf.cast(tf.round(tf.cast(new_w - crop, tf.float64) / 2), tf.int32)
            return out[top:top + crop, left:left + crop]

        spec = tf.TensorSpec([crop, crop, 3], tf.float32)
        self.views = tf.function(lambda batch: tf.map_fn(view, batch, fn_output_signature=spec),
                                 input_signature=[tf.TensorSpec([None], tf.string)])

    def __call__(self, image_bytes) -> dict:
        return self.model(**{self.input: self.views(image_bytes)})


def test_images() -> list[bytes]:
    """A JPEG and a PNG, wide and tall, one over LARGE_PIXELS."""
    from PIL import Image

    rng, images = np.random.RandomState(0), []
    for (h, w), fmt in (((50, 41), "JPEG"), ((1100, 950), "PNG"), ((33, 70), "PNG")):
        buf = io.BytesIO()
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(buf, fmt)
        images.append(buf.getvalue())
    return images


def verified(export) -> LeanPath | None:
    """A LeanPath for `export` if it gives `serving_default`'s outputs (else None)."""
    from diva_tf.serving.export import BYTES_INPUT, IMAGES_SIGNATURE

    if IMAGES_SIGNATURE not in export.root.signatures:
        return None
    lean, batch = LeanPath(export), tf.constant(test_images())
    want = export.signature()(**{BYTES_INPUT: batch})
    try:
        got = lean(batch)
    except (ValueError, tf.errors.OpError):  # e.g. crops of another size than the model takes
        return None
    worst = max(float(tf.reduce_max(tf.abs(want[k] - got[k]))) for k in want)
    return lean if worst <= ATOL else None
