"""The DiVA network (algorithm.md 2): backbones by name (`backbones/`), global pooling per head
(`pooling.py`), PyTorch-style head initialisation (`initializers.py`), the functional model that
joins them (`network.py`) and its option group (`options.py`: `ModelOptions`)."""
