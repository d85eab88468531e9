"""Parity harness: the original PyTorch DiVA code next to diva_tf (see README.md here)."""
