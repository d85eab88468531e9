"""Serving a trained model: the TF Serving SavedModel export (`export.py`), the faiss retrieval
index over an export (`index.py`) and the local REST stand-in for tests and demos
(`stand_in.py`, imported by nothing but `python -m diva_tf.serve`)."""
