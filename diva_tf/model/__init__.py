"""The DiVA network (spec 2): backbones by name (`backbones/`), global pooling per head
(`pooling.py`), PyTorch-style head initialisation (`initializers.py`) and the functional model
that joins them (`network.py`)."""
