"""Read and write AVSBench's ``audio_log_mel/*.pkl`` files without torch and without full unpickling.

The official files are ``pickle.dump`` of a CPU float32 torch tensor ``[5, 1, 96, 64]``. Such a pickle holds:

* an outer pickle calling ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``,
  where ``storage`` is ``torch.storage._load_from_bytes(payload)`` and ``hooks`` an empty
  ``collections.OrderedDict``;
* ``payload``, the storage in torch's legacy ``torch.save`` format: five small pickles (magic number, protocol
  1001, system info, the storage as a persistent id naming ``torch.FloatStorage``, the list of storage keys), then
  per key the element count as int64 and the raw little-endian float32 data.

``load_log_mel`` unpickles both layers with restricted unpicklers whose ``find_class`` maps exactly those
globals to numpy-building functions; any other global is refused with an error naming it. ``dump_log_mel``
writes the same structure, which ``pickle.load`` with torch installed turns into an equal tensor.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from typing import BinaryIO, Union

import numpy as np

__all__ = ["UnsafePickleError", "load_log_mel", "dump_log_mel"]

_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (legacy format)
_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION
_MAX_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any log-mel file, refuses absurd sizes

PathOrFile = Union[str, os.PathLike, BinaryIO]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global that a pickled float tensor does not need, or is not a float tensor pickle."""


class _Storage:
    """A float32 storage read from the legacy payload."""

    def __init__(self, data: np.ndarray):
        self.data = data


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *metadata):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a numpy view of ``storage``, copied."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 got something other than a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise UnsafePickleError(f"bad tensor geometry: size {size}, stride {stride}, offset {offset}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.data.size:
        raise UnsafePickleError(f"tensor of size {size} reaches past its storage of {storage.data.size} elements")
    flat = storage.data[offset:]
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat, shape=size, strides=[s * item for s in stride], writeable=False)
    return np.array(view, dtype=np.float32)


def _empty_ordered_dict():
    """Stand-in for ``collections.OrderedDict`` (the tensor's backward hooks; always empty in a data file)."""
    return {}


class _FloatStorageType:
    """Marker for ``torch.FloatStorage`` inside the legacy payload."""


class _PayloadUnpickler(pickle.Unpickler):
    """One pickle of the legacy payload; only ``torch.FloatStorage`` may be named."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("torch", "FloatStorage"):
            return _FloatStorageType
        raise UnsafePickleError(f"refusing global {module}.{name} in a log-mel storage payload "
                                "(only torch.FloatStorage is allowed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.80} in a log-mel storage payload")
        _, storage_type, key, location, numel, view = pid
        if storage_type is not _FloatStorageType or view is not None:
            raise UnsafePickleError("only whole float32 storages are supported in a log-mel file")
        if not isinstance(numel, int) or not 0 <= numel <= _MAX_ELEMENTS:
            raise UnsafePickleError(f"bad storage size {numel!r}")
        if not (isinstance(location, str) and (location == "cpu" or location.startswith("cuda"))):
            raise UnsafePickleError(f"unknown storage location {location!r}")
        return self.storages.setdefault(str(key), [numel, None])


def _load_from_bytes(payload: bytes) -> _Storage:
    """Stand-in for ``torch.storage._load_from_bytes``: parse the legacy ``torch.save`` of one storage."""
    if not isinstance(payload, (bytes, bytearray)):
        raise UnsafePickleError("_load_from_bytes expects bytes")
    f = io.BytesIO(payload)
    storages: dict = {}

    def load():
        return _PayloadUnpickler(f, storages).load()

    if load() != _MAGIC:
        raise UnsafePickleError("storage payload is not in torch's legacy format (bad magic number)")
    if load() != _PROTOCOL:
        raise UnsafePickleError("storage payload has an unknown protocol version")
    info = load()
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise UnsafePickleError("storage payload is not little-endian")
    entry = load()  # the persistent-id entry [numel, data], filled in below
    keys = load()
    if (len(storages) != 1 or entry is not next(iter(storages.values())) or not isinstance(keys, list)
            or list(map(str, keys)) != list(storages)):
        raise UnsafePickleError("storage payload does not describe exactly one storage")
    for key in keys:
        numel, _ = storages[str(key)]
        head = f.read(8)
        if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
            raise UnsafePickleError("storage payload is truncated or its element count does not match")
        raw = f.read(4 * numel)
        if len(raw) != 4 * numel:
            raise UnsafePickleError("storage payload is truncated")
        storages[str(key)][1] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return _Storage(entry[1])


class _TensorUnpickler(pickle.Unpickler):
    """The outer pickle; only the three globals a pickled float tensor names are allowed."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("collections", "OrderedDict"): _empty_ordered_dict,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self._ALLOWED)
            raise UnsafePickleError(f"refusing global {module}.{name}: a log-mel pickle may only name {allowed}"
                                    ) from None


def load_log_mel(source: PathOrFile) -> np.ndarray:
    """Read a pickled float32 torch tensor (an AVSBench ``audio_log_mel`` file) as a float32 numpy array.

    Raises ``UnsafePickleError`` naming the offending global if the pickle names anything a float tensor does
    not need, and ``ValueError`` naming the file if it is not such a pickle.
    """
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                result = _TensorUnpickler(f).load()
        else:
            result = _TensorUnpickler(source).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{name}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, struct.error) as e:
        raise ValueError(f"{name}: not a pickled float tensor ({type(e).__name__}: {e})") from None
    if not isinstance(result, np.ndarray):
        raise ValueError(f"{name}: the pickle holds a {type(result).__name__}, not a tensor")
    return result


def _op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _op_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _payload(data: np.ndarray) -> bytes:
    """The legacy ``torch.save`` of one float32 storage holding ``data`` (flat, little-endian)."""
    key = "0"
    head = [pickle.dumps(v, protocol=2) for v in (
        _MAGIC, _PROTOCOL,
        {"protocol_version": _PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}})]
    storage = (b"\x80\x02(" + _op_str("storage") + b"ctorch\nFloatStorage\n" + _op_str(key) + _op_str("cpu")
               + _op_int(data.size) + b"Nt" + b"Q.")  # tuple -> BINPERSID -> STOP
    keys = pickle.dumps([key], protocol=2)
    return b"".join(head) + storage + keys + struct.pack("<q", data.size) + data.astype("<f4").tobytes()


def dump_log_mel(array, fileobj: BinaryIO) -> None:
    """Write ``array`` (any real array; stored as float32) so ``pickle.load`` with torch gives an equal tensor.

    The bytes follow what ``pickle.dump(torch_tensor, f)`` writes, as in AVSBench's ``audio_log_mel`` files.
    """
    data = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if data.ndim == 0:
        raise ValueError("dump_log_mel needs an array with at least one dimension")
    stride, step = [], 1
    for n in reversed(data.shape):
        stride.insert(0, step)
        step *= n
    payload = _payload(data.reshape(-1))
    tup = lambda values: b"(" + b"".join(_op_int(v) for v in values) + b"t"  # noqa: E731
    out = (b"\x80\x03" + b"ctorch._utils\n_rebuild_tensor_v2\n" + b"("
           + b"ctorch.storage\n_load_from_bytes\n" + b"B" + struct.pack("<I", len(payload)) + payload
           + b"\x85R"  # TUPLE1, REDUCE
           + _op_int(0) + tup(data.shape) + tup(stride) + b"\x89"  # offset, size, stride, requires_grad=False
           + b"ccollections\nOrderedDict\n)R"  # empty backward hooks
           + b"tR.")
    fileobj.write(out)
