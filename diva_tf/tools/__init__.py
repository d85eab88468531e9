"""Test and demo tooling (`python -m diva_tf.tools.serve`), not part of the product.

Nothing in `diva_tf` (train, evaluate, export, index) imports this package; deployments serve the
exported SavedModel with TensorFlow Serving.
"""
