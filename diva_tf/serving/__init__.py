"""Serving a trained model: the TF Serving SavedModel export (`export.py`), the faiss retrieval
index over an export (`index.py`), and the KServe model server (`server.py`, `retrieval.py`,
with `rest_json.py`, `images.py`, `lean.py`, `errors.py`; imported by nothing but
`python -m diva_tf.serve`)."""
