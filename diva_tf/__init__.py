"""diva_tf: DiVA (Milbich, Roth et al., ECCV 2020) deep metric learning in TensorFlow/Keras 3."""

__version__ = "0.1.0"
