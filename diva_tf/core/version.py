"""The diva_tf version (recorded in every export's manifest)."""

__version__ = "0.1.0"
