"""What DiVA trains (algorithm.md 4): pure loss functions (`losses/`) and triplet miners (`miners/`),
the objective that weighs them per head and owns their parameters (`objective.py`), its option
groups (`options.py`), and per-step diagnostics of the auxiliary tasks (`diagnostics.py`)."""
