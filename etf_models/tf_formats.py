"""TensorFlow's on-disk formats, read and written without TensorFlow (numpy only).

Three formats, enough to take trained weights out of TensorFlow releases:

- **Checkpoint V2** (``name.index`` + ``name.data-0000K-of-0000N``): the index is an SSTable
  (LevelDB's table format: blocks of prefix-compressed keys with restart points, each block
  followed by a compression byte and a masked CRC32C, a 48-byte footer holding the metaindex
  and index block handles and the magic ``0xdb4775248b80fb57``). Its values are
  ``BundleEntryProto`` messages (dtype, shape, shard, offset, size, CRC32C of the bytes); the
  empty key holds the ``BundleHeaderProto`` (number of shards, endianness, version). The
  data shards hold the raw little-endian tensor bytes. TensorFlow writes these tables
  uncompressed; a snappy-compressed block is reported as unsupported.
- **GraphDef** (frozen ``.pb`` graphs): ``NodeDef`` messages whose ``Const`` nodes carry a
  ``TensorProto`` value, either as raw ``tensor_content`` bytes or as typed repeated fields
  (``float_val`` ...), where fewer values than elements means "repeat the last one".
- **Memmapped package** (``.pbmm``, from TensorFlow's ``convert_graphdef_memmapped_format``):
  regions laid end to end, then a ``MemmappedFileSystemDirectory`` message, then its offset
  as a little-endian uint64; the GraphDef is the region ``memmapped_package://.`` and big
  constants became ``ImmutableConst`` nodes naming their region (``memory_region_name``).
  Element lengths are stored by TensorFlow 2 and derived from the next offset otherwise.

The protobuf wire format (varints, 64-bit, length-delimited, 32-bit fields) is decoded by
hand. Readers and writers are checked in development against TensorFlow 2.21 in both
directions (``tests/test_speech_import.py`` with ``ETF_TF_PYTHON``; the memmapped package
against TensorFlow's C++ ``MemmappedFileSystemWriter`` and ``MemmappedEnv``). Files that
cannot be read raise :class:`TFFormatError` with a sentence saying what is wrong.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AttrValue", "BundleEntry", "CheckpointReader", "NodeDef", "TFFormatError",
    "build_table", "const_node", "decode_tensor_proto", "encode_graph_def",
    "encode_tensor_proto", "extracted_tar", "graph_constants", "is_checkpoint_index",
    "is_checkpoint_member", "is_memmapped_package", "open_checkpoint", "parse_graph_def",
    "read_checkpoint", "read_graph_constants", "read_memmapped_graph", "read_table",
    "resolve_checkpoint_prefix", "write_checkpoint", "write_checkpoint_state",
    "write_graph_def", "write_memmapped_graph",
]


class TFFormatError(ValueError):
    """A file that is not (or no longer) a readable TensorFlow checkpoint, graph or table."""


# --------------------------------------------------------------------------------------
# Protobuf wire format
# --------------------------------------------------------------------------------------

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5
_U64 = 1 << 64


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """One base-128 varint at ``pos`` -> (value, next position)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise TFFormatError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise TFFormatError("protobuf varint longer than 10 bytes")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """Decode one protobuf message's fields -> (field number, wire type, value).

    Varints come back as non-negative ints, 64- and 32-bit fields as their raw bytes (the
    caller knows whether they are floats or integers), length-delimited fields as
    memoryviews into ``buf`` (no copy). Groups (wire types 3 and 4) are rejected: no
    TensorFlow message uses them.
    """
    mv = memoryview(buf)
    pos, end = 0, len(mv)
    while pos < end:
        key, pos = _read_varint(mv, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise TFFormatError("protobuf field number 0")
        if wire == WT_VARINT:
            value, pos = _read_varint(mv, pos, end)
        elif wire == WT_I64 or wire == WT_I32:
            size = 8 if wire == WT_I64 else 4
            if pos + size > end:
                raise TFFormatError("truncated protobuf fixed-width field")
            value, pos = mv[pos:pos + size], pos + size
        elif wire == WT_LEN:
            size, pos = _read_varint(mv, pos, end)
            if pos + size > end:
                raise TFFormatError("protobuf length-delimited field runs past the end")
            value, pos = mv[pos:pos + size], pos + size
        else:
            raise TFFormatError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _expect(wire: int, want: int, what: str) -> None:
    if wire != want:
        raise TFFormatError(f"{what}: wire type {wire}, expected {want}")


def _signed64(v: int) -> int:
    return v - _U64 if v >= 1 << 63 else v


def _varints(data: memoryview) -> list[int]:
    out, pos, end = [], 0, len(data)
    while pos < end:
        v, pos = _read_varint(data, pos, end)
        out.append(v)
    return out


def _text(data: memoryview, what: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise TFFormatError(f"{what} is not UTF-8 text") from None


def _enc_varint(value: int) -> bytes:
    if value < 0:
        value += _U64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _f_varint(number: int, value: int) -> bytes:
    return _key(number, WT_VARINT) + _enc_varint(int(value))


def _f_bytes(number: int, data: bytes) -> bytes:
    return _key(number, WT_LEN) + _enc_varint(len(data)) + data


def _f_fixed32(number: int, value: int) -> bytes:
    return _key(number, WT_I32) + struct.pack("<I", value)


def _f_float(number: int, value: float) -> bytes:
    return _key(number, WT_I32) + struct.pack("<f", value)


# --------------------------------------------------------------------------------------
# Data types and shapes
# --------------------------------------------------------------------------------------

DT_FLOAT, DT_STRING, DT_BFLOAT16 = 1, 7, 14

#: TensorFlow DataType enum -> numpy dtype (quantized types read as their storage type).
_NP_OF_DT: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64), 3: np.dtype(np.int32),
    4: np.dtype(np.uint8), 5: np.dtype(np.int16), 6: np.dtype(np.int8),
    8: np.dtype(np.complex64), 9: np.dtype(np.int64), 10: np.dtype(np.bool_),
    11: np.dtype(np.int8), 12: np.dtype(np.uint8), 13: np.dtype(np.int32),
    15: np.dtype(np.int16), 16: np.dtype(np.uint16), 17: np.dtype(np.uint16),
    18: np.dtype(np.complex128), 19: np.dtype(np.float16), 22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}
#: numpy dtype -> DataType enum, for the writers (no quantized types).
_DT_OF_NP: dict[np.dtype, int] = {
    np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4, np.dtype(np.int16): 5, np.dtype(np.int8): 6,
    np.dtype(np.complex64): 8, np.dtype(np.int64): 9, np.dtype(np.bool_): 10,
    np.dtype(np.uint16): 17, np.dtype(np.complex128): 18, np.dtype(np.float16): 19,
    np.dtype(np.uint32): 22, np.dtype(np.uint64): 23,
}
_DT_NAMES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128",
    19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}


def dtype_name(dt: int) -> str:
    """Readable name of a TensorFlow DataType enum value (``_ref`` for reference types)."""
    if dt > 100:
        return dtype_name(dt - 100) + "_ref"
    return _DT_NAMES.get(dt, f"dtype {dt}")


def _np_dtype(dt: int, what: str) -> np.dtype:
    if dt in _NP_OF_DT:
        return _NP_OF_DT[dt]
    raise TFFormatError(f"{what}: {dtype_name(dt)} tensors are not supported")


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _decode_shape(data: memoryview) -> tuple[int, ...] | None:
    """TensorShapeProto -> tuple of sizes (-1 unknown), or None for an unknown rank."""
    dims: list[int] = []
    unknown_rank = False
    for number, wire, value in iter_fields(data):
        if number == 2:
            _expect(wire, WT_LEN, "TensorShapeProto.dim")
            size = 0
            for n2, w2, v2 in iter_fields(value):
                if n2 == 1:
                    _expect(w2, WT_VARINT, "TensorShapeProto.Dim.size")
                    size = _signed64(v2)
            dims.append(size)
        elif number == 3 and wire == WT_VARINT:
            unknown_rank = bool(value)
    return None if unknown_rank else tuple(dims)


def _encode_shape(shape: Iterable[int]) -> bytes:
    return b"".join(_f_bytes(2, _f_varint(1, d) if d else b"") for d in shape)


# --------------------------------------------------------------------------------------
# CRC32C (Castagnoli), masked as LevelDB and TensorFlow store it
# --------------------------------------------------------------------------------------

try:  # the C implementation ships as a dependency of aiortc
    import google_crc32c as _gcrc

    def _crc32c(data: bytes | bytearray | memoryview) -> int:
        return _gcrc.value(data if isinstance(data, bytes) else bytes(data))

    FAST_CRC32C = True
except ImportError:  # pragma: no cover - exercised only where google-crc32c is missing
    _TABLE = []
    for _n in range(256):
        _c = _n
        for _ in range(8):
            _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
        _TABLE.append(_c)

    def _crc32c(data: bytes | bytearray | memoryview) -> int:
        crc = 0xFFFFFFFF
        for b in bytes(data):
            crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF

    FAST_CRC32C = False

_MASK_DELTA = 0xA282EAD8
#: Without the C implementation, tensors larger than this are not checksummed (too slow).
_SLOW_CRC_LIMIT = 1 << 20


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------
# SSTable (LevelDB table format)
# --------------------------------------------------------------------------------------

TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_TRAILER_LEN = 5  # compression type byte + masked crc32c


def _decode_handle(data: memoryview, pos: int = 0) -> tuple[tuple[int, int], int]:
    offset, pos = _read_varint(data, pos, len(data))
    size, pos = _read_varint(data, pos, len(data))
    return (offset, size), pos


def _read_block(data: memoryview, handle: tuple[int, int], what: str) -> memoryview:
    offset, size = handle
    if offset + size + _TRAILER_LEN > len(data):
        raise TFFormatError(f"{what} block lies past the end of the file (truncated?)")
    compression = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if _unmask(stored) != _crc32c(data[offset:offset + size + 1]):
        raise TFFormatError(f"{what} block fails its checksum (corrupt file)")
    if compression == 1:
        raise TFFormatError(f"{what} block is snappy-compressed; TensorFlow writes checkpoint "
                            "indexes uncompressed and this reader does not decode snappy")
    if compression != 0:
        raise TFFormatError(f"{what} block has unknown compression type {compression}")
    return data[offset:offset + size]


def _block_entries(block: memoryview, what: str) -> Iterator[tuple[bytes, memoryview]]:
    """Entries of one block: prefix-compressed keys, restart array at the end."""
    n = len(block)
    if n < 4:
        raise TFFormatError(f"{what} block is too short")
    (num_restarts,) = struct.unpack_from("<I", block, n - 4)
    limit = n - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise TFFormatError(f"{what} block has a bad restart array")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _read_varint(block, pos, limit)
        unshared, pos = _read_varint(block, pos, limit)
        vlen, pos = _read_varint(block, pos, limit)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise TFFormatError(f"{what} block has a malformed entry")
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def read_table(data: bytes | memoryview) -> list[tuple[bytes, memoryview]]:
    """Every (key, value) of an SSTable held in memory, in key order, checksums verified."""
    mv = memoryview(data)
    if len(mv) < _FOOTER_LEN:
        raise TFFormatError("too short to be a TensorFlow table (no footer)")
    (magic,) = struct.unpack_from("<Q", mv, len(mv) - 8)
    if magic != TABLE_MAGIC:
        raise TFFormatError("not a TensorFlow table, or a truncated one (no table magic "
                            "number at its end)")
    footer = mv[len(mv) - _FOOTER_LEN:len(mv) - 8]
    _metaindex, pos = _decode_handle(footer)
    index_handle, _ = _decode_handle(footer, pos)
    entries: list[tuple[bytes, memoryview]] = []
    for _separator, handle_bytes in _block_entries(_read_block(mv, index_handle, "index"),
                                                   "index"):
        handle, _ = _decode_handle(handle_bytes)
        entries.extend(_block_entries(_read_block(mv, handle, "data"), "data"))
    for (a, _), (b, _) in zip(entries, entries[1:], strict=False):
        if a >= b:
            raise TFFormatError("table keys are out of order (corrupt file)")
    return entries


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count < self.interval:
            limit = min(len(key), len(self.last))
            while shared < limit and key[shared] == self.last[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += _enc_varint(shared) + _enc_varint(len(key) - shared)
        self.buf += _enc_varint(len(value)) + key[shared:] + value
        self.last = key
        self.count += 1

    def size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        tail = b"".join(struct.pack("<I", r) for r in self.restarts)
        return bytes(self.buf) + tail + struct.pack("<I", len(self.restarts))


def build_table(entries: Iterable[tuple[bytes, bytes]], block_size: int = 4096,
                restart_interval: int = 16) -> bytes:
    """An uncompressed SSTable of ``entries`` (keys strictly increasing, as bytes)."""
    out = bytearray()
    index: list[tuple[bytes, tuple[int, int]]] = []

    def write_block(contents: bytes) -> tuple[int, int]:
        handle = (len(out), len(contents))
        out.extend(contents)
        out.append(0)  # no compression
        out.extend(struct.pack("<I", _mask(_crc32c(contents + b"\x00"))))
        return handle

    block = _BlockBuilder(restart_interval)
    prev: bytes | None = None
    for key, value in entries:
        if prev is not None and key <= prev:
            raise ValueError(f"table keys must be strictly increasing ({key!r} after {prev!r})")
        block.add(key, value)
        prev = key
        if block.size() >= block_size:
            index.append((key, write_block(block.finish())))
            block = _BlockBuilder(restart_interval)
    if block.buf:
        index.append((block.last, write_block(block.finish())))
    metaindex = write_block(_BlockBuilder(restart_interval).finish())
    index_block = _BlockBuilder(1)
    for key, (offset, size) in index:
        index_block.add(key, _enc_varint(offset) + _enc_varint(size))
    index_handle = write_block(index_block.finish())
    handles = b"".join(_enc_varint(v) for v in (*metaindex, *index_handle))
    out.extend(handles.ljust(_FOOTER_LEN - 8, b"\x00"))
    out.extend(struct.pack("<Q", TABLE_MAGIC))
    return bytes(out)


# --------------------------------------------------------------------------------------
# Checkpoint V2 (tensor bundle)
# --------------------------------------------------------------------------------------

DATA_FILE_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")
#: Checkpoint state files, in the order they are looked for in a directory (DeepSpeech
#: keeps its best validation checkpoint under ``best_dev_checkpoint``).
STATE_FILES = ("best_dev_checkpoint", "checkpoint")


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives in a V2 checkpoint (a decoded ``BundleEntryProto``)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None  # unmasked; None when absent
    sliced: bool = False  # a partitioned variable (data stored under other keys)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def _parse_entry(name: str, data: memoryview) -> BundleEntry:
    kw: dict[str, Any] = {"dtype": 0, "shape": ()}
    for number, wire, value in iter_fields(data):
        if number == 1:
            _expect(wire, WT_VARINT, "BundleEntryProto.dtype")
            kw["dtype"] = value
        elif number == 2:
            _expect(wire, WT_LEN, "BundleEntryProto.shape")
            kw["shape"] = _decode_shape(value) or ()
        elif number in (3, 4, 5):
            _expect(wire, WT_VARINT, "BundleEntryProto")
            kw[{3: "shard_id", 4: "offset", 5: "size"}[number]] = _signed64(value)
        elif number == 6:
            _expect(wire, WT_I32, "BundleEntryProto.crc32c")
            kw["crc32c"] = _unmask(struct.unpack("<I", value)[0])
        elif number == 7:
            kw["sliced"] = True
    return BundleEntry(name=name, **kw)


def _read_state_file(path: str) -> str | None:
    """``model_checkpoint_path`` of a checkpoint state file (text proto), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    if not m:
        return None
    return re.sub(r"\\(.)", r"\1", m.group(1))


def resolve_checkpoint_prefix(path: str | os.PathLike) -> str:
    """The prefix of the checkpoint named by ``path``.

    ``path`` may be the prefix itself, the ``.index`` file, one ``.data-*`` shard, or a
    directory holding a state file (``best_dev_checkpoint`` or ``checkpoint``) or exactly
    one ``.index``. The checkpoint a state file names is looked for inside the directory
    only (by its base name first), as state files often hold absolute paths of the
    machine that trained the model.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        stale = []
        for state in STATE_FILES:
            named = _read_state_file(os.path.join(p, state))
            if not named:
                continue
            inside = [os.path.join(p, os.path.basename(named))]
            if not os.path.isabs(named):
                inside.append(os.path.join(p, named))
            for candidate in inside:  # never outside the directory (archives, moved dirs)
                if os.path.isfile(candidate + ".index"):
                    return candidate
            stale.append(f"'{state}' names {named!r}, whose .index is not there")
        indexes = sorted(f[:-6] for f in os.listdir(p) if f.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(p, indexes[0])
        why = f" ({'; '.join(stale)})" if stale else ""
        if not indexes:
            raise TFFormatError(f"{p}: no TensorFlow checkpoint (.index file) in this "
                                f"directory{why}")
        raise TFFormatError(f"{p}: several checkpoints ({', '.join(indexes)}){why}; name one "
                            "of them (its .index file or prefix)")
    if p.endswith(".index") and os.path.isfile(p):
        return p[:-6]
    if DATA_FILE_RE.search(p) and os.path.isfile(p):
        return DATA_FILE_RE.sub("", p)
    if os.path.isfile(p + ".index"):
        return p
    raise TFFormatError(f"{p}: no TensorFlow checkpoint here (expected {p}.index, a .index "
                        "file, or a directory with a 'checkpoint' file)")


def is_checkpoint_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file ending in the SSTable magic (a checkpoint index)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < _FOOTER_LEN:
                return False
            f.seek(-8, os.SEEK_END)
            return struct.unpack("<Q", f.read(8))[0] == TABLE_MAGIC
    except OSError:
        return False


class CheckpointReader:
    """Lazy reader of a V2 checkpoint: the index is parsed at once, tensors on request.

    ``entries`` maps every variable name to its :class:`BundleEntry`; :meth:`get_tensor`
    reads one tensor from its data shard (and verifies its CRC32C), so converting a model
    never loads the optimizer slots stored beside it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.prefix = resolve_checkpoint_prefix(path)
        index_path = self.prefix + ".index"
        with open(index_path, "rb") as f:
            raw = f.read()
        try:
            table = read_table(raw)
        except TFFormatError as e:
            raise TFFormatError(f"{index_path}: {e}") from None
        if not table or table[0][0] != b"":
            raise TFFormatError(f"{index_path}: a table, but not a V2 checkpoint index (no "
                                "bundle header; TensorFlow V1 checkpoints are not supported)")
        self.num_shards, self.big_endian, self.version = 1, False, 0
        for number, wire, value in iter_fields(table[0][1]):
            if number == 1 and wire == WT_VARINT:
                self.num_shards = value
            elif number == 2 and wire == WT_VARINT:
                self.big_endian = value == 1
            elif number == 3 and wire == WT_LEN:
                for n2, w2, v2 in iter_fields(value):
                    if n2 == 1 and w2 == WT_VARINT:
                        self.version = v2
        if self.num_shards < 1:
            raise TFFormatError(f"{index_path}: header says {self.num_shards} data shards")
        self.entries: dict[str, BundleEntry] = {}
        for key, value in table[1:]:
            name = key.decode("utf-8", errors="replace")
            try:
                self.entries[name] = _parse_entry(name, value)
            except TFFormatError as e:
                raise TFFormatError(f"{index_path}: entry {name!r}: {e}") from None

    def shard_path(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: e.shape for name, e in self.entries.items()}

    def get_tensor(self, name: str, verify: bool = True) -> np.ndarray:
        """One tensor as a numpy array (bfloat16 widened to float32, strings as bytes)."""
        try:
            entry = self.entries[name]
        except KeyError:
            raise KeyError(f"{self.prefix}: no tensor named {name!r}") from None
        where = f"{self.prefix}: {name!r}"
        if entry.sliced:
            raise TFFormatError(f"{where} is a partitioned (sliced) variable; not supported")
        if not 0 <= entry.shard_id < self.num_shards:
            raise TFFormatError(f"{where} names data shard {entry.shard_id} of "
                                f"{self.num_shards}")
        if any(d < 0 for d in entry.shape):
            raise TFFormatError(f"{where} has an unknown dimension in its shape")
        shard = self.shard_path(entry.shard_id)
        buf = bytearray(entry.size)
        try:
            with open(shard, "rb") as f:
                f.seek(entry.offset)
                got = f.readinto(buf)
        except FileNotFoundError:
            raise TFFormatError(f"{where}: data file {shard} is missing") from None
        if got != entry.size:
            raise TFFormatError(f"{where}: data file {shard} is truncated")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.dtype == DT_STRING:
            return self._strings(buf, count, entry, where, verify)
        if verify and entry.crc32c is not None and (FAST_CRC32C or entry.size <= _SLOW_CRC_LIMIT):
            if _crc32c(buf) != entry.crc32c:
                raise TFFormatError(f"{where}: data fails its checksum (corrupt data file)")
        raw_dtype = np.dtype(np.uint16) if entry.dtype == DT_BFLOAT16 else \
            _np_dtype(entry.dtype, where)
        if count * raw_dtype.itemsize != entry.size:
            raise TFFormatError(f"{where}: {entry.size} bytes stored for a "
                                f"{entry.dtype_name} tensor of shape {list(entry.shape)}")
        order = ">" if self.big_endian else "<"
        array = np.frombuffer(buf, raw_dtype.newbyteorder(order)).reshape(entry.shape)
        if self.big_endian:
            array = array.astype(raw_dtype)
        return _bfloat16_to_float32(array) if entry.dtype == DT_BFLOAT16 else array

    @staticmethod
    def _strings(buf: bytearray, count: int, entry: BundleEntry, where: str,
                 verify: bool) -> np.ndarray:
        """String tensor: a varint length per element, a masked CRC32C of the lengths, then
        the bytes. The entry's CRC32C covers the lengths as little-endian uint32 (uint64
        beyond 4 GiB), not as varints, then the length checksum and the bytes."""
        mv = memoryview(buf)
        pos, lengths = 0, []
        for _ in range(count):
            n, pos = _read_varint(mv, pos, len(mv))
            lengths.append(n)
        if pos + 4 > len(mv) or pos + 4 + sum(lengths) != len(mv):
            raise TFFormatError(f"{where}: string data does not fill its entry")
        if verify and entry.crc32c is not None:
            crc_input = b"".join(struct.pack("<I" if n < 1 << 32 else "<Q", n) for n in lengths)
            crc_input += bytes(mv[pos:])
            if _crc32c(crc_input) != entry.crc32c:
                raise TFFormatError(f"{where}: data fails its checksum (corrupt data file)")
        pos += 4
        out = np.empty(count, dtype=object)
        for i, n in enumerate(lengths):
            out[i] = bytes(mv[pos:pos + n])
            pos += n
        return out.reshape(entry.shape)

    def read_all(self, names: Iterable[str] | None = None,
                 skip: Callable[[BundleEntry], bool] | None = None) -> dict[str, np.ndarray]:
        """Several tensors by name (all by default), leaving out those ``skip`` accepts."""
        chosen = self.entries if names is None else names
        return {n: self.get_tensor(n) for n in chosen
                if skip is None or not skip(self.entries[n])}


def _safe_member_name(name: str) -> str | None:
    base = os.path.basename(name.rstrip("/"))
    return base if base and base not in (".", "..") else None


@contextlib.contextmanager
def extracted_tar(path: str | os.PathLike, want: Callable[[str], bool]) -> Iterator[str]:
    """Extract the regular files of a tar archive whose base names ``want`` accepts into a
    temporary directory (flattened: never outside it); yields the directory."""
    with tempfile.TemporaryDirectory(prefix="etf-tf-") as tmp:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    base = _safe_member_name(member.name)
                    if not member.isfile() or base is None or not want(base):
                        continue
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    with src, open(os.path.join(tmp, base), "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise TFFormatError(f"{os.fspath(path)}: cannot read the archive ({e})") from None
        yield tmp


def is_checkpoint_member(base: str) -> bool:
    """Whether a file name belongs to a checkpoint (index, data shard or state file)."""
    return base.endswith(".index") or bool(DATA_FILE_RE.search(base)) or base in STATE_FILES


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike) -> Iterator[CheckpointReader]:
    """A :class:`CheckpointReader` for a prefix, .index, directory, or a .tar(.gz) archive
    of a checkpoint directory (members extracted to a temporary directory for the duration
    of the ``with`` block)."""
    p = os.fspath(path)
    if os.path.isfile(p) and tarfile.is_tarfile(p):
        with extracted_tar(p, is_checkpoint_member) as tmp:
            yield CheckpointReader(tmp)
    else:
        yield CheckpointReader(p)


def read_checkpoint(path: str | os.PathLike,
                    names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """{variable name: array} of a V2 checkpoint (see :func:`open_checkpoint` for ``path``)."""
    with open_checkpoint(path) as reader:
        return reader.read_all(names)


def write_checkpoint(prefix: str | os.PathLike, tensors: Mapping[str, Any]) -> str:
    """Write ``tensors`` as a single-shard V2 checkpoint (``prefix.index`` and
    ``prefix.data-00000-of-00001``); returns the prefix. Numeric and bool arrays only."""
    p = os.fspath(prefix)
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    data = bytearray()
    entries: list[tuple[bytes, bytes]] = []
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        if not name:
            raise ValueError("the empty tensor name is reserved for the checkpoint header")
        array = np.asarray(tensors[name])
        if array.dtype not in _DT_OF_NP:
            raise ValueError(f"{name!r}: cannot write {array.dtype} tensors")
        raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        entry = _f_varint(1, _DT_OF_NP[array.dtype]) + _f_bytes(2, _encode_shape(array.shape))
        if data:
            entry += _f_varint(4, len(data))
        entry += _f_varint(5, len(raw)) + _f_fixed32(6, _mask(_crc32c(raw)))
        entries.append((name.encode("utf-8"), entry))
        data += raw
    header = _f_varint(1, 1) + _f_bytes(3, _f_varint(1, 1))  # one shard, little endian, v1
    index = build_table([(b"", header), *entries])
    with open(f"{p}.data-00000-of-00001", "wb") as f:
        f.write(data)
    with open(f"{p}.index", "wb") as f:
        f.write(index)
    return p


def write_checkpoint_state(directory: str | os.PathLike, prefix: str,
                           filename: str = "checkpoint") -> str:
    """Write a checkpoint state file naming ``prefix`` (relative to ``directory``)."""
    name = os.path.basename(prefix).replace("\\", "\\\\").replace('"', '\\"')
    path = os.path.join(os.fspath(directory), filename)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
    return path


# --------------------------------------------------------------------------------------
# TensorProto
# --------------------------------------------------------------------------------------

#: TensorProto typed value fields: field number -> how its values are stored.
_VAL_FIXED = {5: "<f4", 6: "<f8", 9: "<f4", 12: "<f8"}  # float, double, scomplex, dcomplex
_VAL_VARINT = (7, 10, 11, 13, 16, 17)  # int, int64, bool, half, uint32, uint64
#: Which typed field holds each dtype's values.
_VAL_FIELD_OF_DT = {
    1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 8: 9, 9: 10, 10: 11, 11: 7, 12: 7, 13: 7, 14: 13,
    15: 7, 16: 7, 17: 7, 18: 12, 19: 13, 22: 16, 23: 17,
}


def decode_tensor_proto(data: bytes | memoryview, what: str = "tensor") -> np.ndarray:
    """A ``TensorProto`` -> numpy array, following TensorFlow's rules: raw
    ``tensor_content`` when present, else the typed values, the last one repeated when there
    are fewer values than elements (zeros when there are none)."""
    dt, shape, content = 0, (), None
    fixed: dict[int, list[bytes]] = {}
    varint: dict[int, list[int]] = {}
    strings: list[bytes] = []
    for number, wire, value in iter_fields(data):
        if number == 1:
            _expect(wire, WT_VARINT, f"{what}: TensorProto.dtype")
            dt = value
        elif number == 2:
            _expect(wire, WT_LEN, f"{what}: TensorProto.tensor_shape")
            decoded = _decode_shape(value)
            if decoded is None or any(d < 0 for d in decoded):
                raise TFFormatError(f"{what}: constant with an unknown shape")
            shape = decoded
        elif number == 4:
            _expect(wire, WT_LEN, f"{what}: TensorProto.tensor_content")
            content = value
        elif number == 8:
            _expect(wire, WT_LEN, f"{what}: TensorProto.string_val")
            strings.append(bytes(value))
        elif number in _VAL_FIXED:
            size = np.dtype(_VAL_FIXED[number]).itemsize
            if not (wire == WT_LEN or (wire == WT_I32 and size == 4)
                    or (wire == WT_I64 and size == 8)):
                raise TFFormatError(f"{what}: TensorProto field {number} has wire type {wire}")
            fixed.setdefault(number, []).append(bytes(value))
        elif number in _VAL_VARINT:
            if wire == WT_LEN:
                varint.setdefault(number, []).extend(_varints(value))
            else:
                _expect(wire, WT_VARINT, f"{what}: TensorProto field {number}")
                varint.setdefault(number, []).append(value)
    count = int(np.prod(shape, dtype=np.int64))
    if dt == DT_STRING and content is not None and len(content):
        return _string_list(content, count, what).reshape(shape)
    if dt == DT_STRING:
        return _fill(np.array(strings, dtype=object), count, shape, what, b"")
    if dt == 0:
        raise TFFormatError(f"{what}: TensorProto without a dtype")
    np_dtype = np.dtype(np.uint16) if dt == DT_BFLOAT16 else _np_dtype(dt, what)
    if content is not None and (len(content) or count == 0):
        if len(content) != count * np_dtype.itemsize:
            raise TFFormatError(f"{what}: tensor_content holds {len(content)} bytes for a "
                                f"{dtype_name(dt)} tensor of shape {list(shape)}")
        array = np.frombuffer(bytes(content), np_dtype.newbyteorder("<")).astype(np_dtype)
        array = array.reshape(shape)
    else:
        number = _VAL_FIELD_OF_DT.get(dt)
        if number in _VAL_FIXED:
            values = np.frombuffer(b"".join(fixed.get(number, [])), _VAL_FIXED[number])
            if dt in (8, 18):
                values = values[0::2] + 1j * values[1::2]
        else:
            ints = varint.get(number, [])
            if number in (7, 10):
                ints = [_signed64(v) for v in ints]
            values = np.array(ints, dtype=np.int64 if number != 17 else np.uint64)
        values = values.astype(np_dtype) if dt not in (14, 19) else \
            values.astype(np.uint16).view(np_dtype if dt == 19 else np.uint16)
        array = _fill(values, count, shape, what, 0)
    return _bfloat16_to_float32(array) if dt == DT_BFLOAT16 else array


def _string_list(data: memoryview, count: int, what: str) -> np.ndarray:
    """Strings packed in ``tensor_content`` (as TensorFlow's C++ ``AsProtoTensorContent``
    writes them): a varint length per element, then the bytes."""
    pos, lengths = 0, []
    for _ in range(count):
        n, pos = _read_varint(data, pos, len(data))
        lengths.append(n)
    if pos + sum(lengths) != len(data):
        raise TFFormatError(f"{what}: packed strings do not fill tensor_content")
    out = np.empty(count, dtype=object)
    for i, n in enumerate(lengths):
        out[i] = bytes(data[pos:pos + n])
        pos += n
    return out


def _fill(values: np.ndarray, count: int, shape: tuple[int, ...], what: str,
          zero: Any) -> np.ndarray:
    if len(values) > count:
        raise TFFormatError(f"{what}: {len(values)} values for shape {list(shape)}")
    if len(values) < count:
        pad = values[-1] if len(values) else zero
        values = np.concatenate([values, np.full(count - len(values), pad, values.dtype)])
    return values.reshape(shape)


def encode_tensor_proto(array: Any, typed: bool = False) -> bytes:
    """A ``TensorProto`` for ``array``: raw ``tensor_content`` by default, or with
    ``typed`` the typed value fields (a single value when all elements are equal, as
    TensorFlow itself writes splat constants). Arrays of bytes/str become string tensors."""
    a = np.asarray(array)
    if a.dtype == object or a.dtype.kind in "SU":
        items = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in a.reshape(-1)]
        body = _f_varint(1, DT_STRING) + _f_bytes(2, _encode_shape(a.shape))
        return body + b"".join(_f_bytes(8, s) for s in items)
    if a.dtype not in _DT_OF_NP:
        raise ValueError(f"cannot encode {a.dtype} tensors")
    dt = _DT_OF_NP[a.dtype]
    body = _f_varint(1, dt) + _f_bytes(2, _encode_shape(a.shape))
    flat = a.reshape(-1)
    if not typed:
        return body + _f_bytes(4, np.ascontiguousarray(flat, a.dtype.newbyteorder("<"))
                               .tobytes())
    if flat.size > 1 and np.all(flat == flat[0]):
        flat = flat[:1]
    number = _VAL_FIELD_OF_DT[dt]
    if number in _VAL_FIXED:
        if dt in (8, 18):
            flat = np.stack([flat.real, flat.imag], axis=-1).reshape(-1)
        packed = flat.astype(_VAL_FIXED[number]).tobytes()
    else:
        ints = flat.view(np.uint16) if dt == 19 else flat
        packed = b"".join(_enc_varint(int(v)) for v in ints.tolist())
    return body + (_f_bytes(number, packed) if flat.size else b"")


# --------------------------------------------------------------------------------------
# GraphDef
# --------------------------------------------------------------------------------------

@dataclass
class AttrValue:
    """One ``AttrValue``: ``kind`` is its oneof field (s, i, f, b, type, shape, tensor,
    list, func, placeholder); tensors stay encoded (decode with ``tensor()``); a list is a
    dict {kind: [values]}."""

    kind: str
    value: Any

    def tensor(self, what: str = "tensor") -> np.ndarray:
        if self.kind != "tensor":
            raise TFFormatError(f"{what}: attribute holds a {self.kind}, not a tensor")
        return decode_tensor_proto(self.value, what)


@dataclass
class NodeDef:
    """One graph node: name, op, inputs and attributes."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attr: dict[str, AttrValue] = field(default_factory=dict)
    device: str = ""


_ATTR_KINDS = {1: "list", 2: "s", 3: "i", 4: "f", 5: "b", 6: "type", 7: "shape",
               8: "tensor", 9: "placeholder", 10: "func"}
_LIST_KINDS = {2: "s", 3: "i", 4: "f", 5: "b", 6: "type", 7: "shape", 8: "tensor", 9: "func"}


def _scalar_attr(kind: str, wire: int, value: Any, what: str) -> Any:
    if kind in ("s", "placeholder", "func", "tensor", "shape"):
        _expect(wire, WT_LEN, what)
        if kind == "shape":
            return _decode_shape(value)
        return bytes(value) if kind in ("s", "func") else value
    if kind == "f":
        _expect(wire, WT_I32, what)
        return struct.unpack("<f", value)[0]
    _expect(wire, WT_VARINT, what)
    return bool(value) if kind == "b" else _signed64(value)


def _decode_attr(data: memoryview, what: str) -> AttrValue:
    result = AttrValue("none", None)
    for number, wire, value in iter_fields(data):
        kind = _ATTR_KINDS.get(number)
        if kind is None:
            continue
        if kind != "list":
            result = AttrValue(kind, _scalar_attr(kind, wire, value, what))
            continue
        _expect(wire, WT_LEN, what)
        items: dict[str, list[Any]] = {}
        for n2, w2, v2 in iter_fields(value):
            k2 = _LIST_KINDS.get(n2)
            if k2 is None:
                continue
            if w2 == WT_LEN and k2 in ("i", "b", "type", "f"):  # packed
                if k2 == "f":
                    vals: list[Any] = list(np.frombuffer(bytes(v2), "<f4").astype(float))
                else:
                    vals = [bool(v) if k2 == "b" else _signed64(v) for v in _varints(v2)]
                items.setdefault(k2, []).extend(vals)
            else:
                items.setdefault(k2, []).append(_scalar_attr(k2, w2, v2, what))
        result = AttrValue("list", items)
    return result


def _decode_node(data: memoryview) -> NodeDef:
    node = NodeDef(name="", op="")
    for number, wire, value in iter_fields(data):
        if number in (1, 2, 3, 4):
            _expect(wire, WT_LEN, "NodeDef")
            text = _text(value, "node field")
            if number == 1:
                node.name = text
            elif number == 2:
                node.op = text
            elif number == 3:
                node.inputs.append(text)
            else:
                node.device = text
        elif number == 5:
            _expect(wire, WT_LEN, "NodeDef.attr")
            key, attr = "", AttrValue("none", None)
            for n2, w2, v2 in iter_fields(value):
                if n2 == 1:
                    _expect(w2, WT_LEN, "NodeDef.attr key")
                    key = _text(v2, "attribute name")
                elif n2 == 2:
                    _expect(w2, WT_LEN, "NodeDef.attr value")
                    attr = _decode_attr(v2, f"{node.name or 'node'}.{key or 'attr'}")
            node.attr[key] = attr
    return node


def parse_graph_def(data: bytes | memoryview) -> list[NodeDef]:
    """The nodes of a serialized ``GraphDef`` (function libraries are ignored).

    Raises :class:`TFFormatError` unless the bytes are a well-formed GraphDef with at least
    one node, each with a name and an op.
    """
    nodes: list[NodeDef] = []
    for number, wire, value in iter_fields(data):
        if number == 1:
            _expect(wire, WT_LEN, "GraphDef.node")
            node = _decode_node(value)
            if not node.name or not node.op:
                raise TFFormatError("a GraphDef node without a name or op")
            nodes.append(node)
        elif number in (2, 4):
            _expect(wire, WT_LEN, "GraphDef")
        elif number == 3:
            _expect(wire, WT_VARINT, "GraphDef.version")
    if not nodes:
        raise TFFormatError("no graph nodes (not a TensorFlow GraphDef)")
    return nodes


def _encode_attr(attr: AttrValue) -> bytes:
    kind, v = attr.kind, attr.value
    if kind == "list":
        body = b""
        for k2, vals in v.items():
            number = next(n for n, k in _LIST_KINDS.items() if k == k2)
            for item in vals:
                body += _encode_scalar_attr(number, k2, item)
        return _f_bytes(1, body)
    number = next(n for n, k in _ATTR_KINDS.items() if k == kind)
    return _encode_scalar_attr(number, kind, v)


def _encode_scalar_attr(number: int, kind: str, v: Any) -> bytes:
    if kind in ("s", "placeholder", "func"):
        return _f_bytes(number, v.encode("utf-8") if isinstance(v, str) else bytes(v))
    if kind == "tensor":
        return _f_bytes(number, v if isinstance(v, bytes | memoryview)
                        else encode_tensor_proto(v))
    if kind == "shape":
        return _f_bytes(number, _encode_shape(v))
    if kind == "f":
        return _f_float(number, float(v))
    return _f_varint(number, int(v))


def encode_graph_def(nodes: Iterable[NodeDef], producer: int = 27) -> bytes:
    """Serialize ``nodes`` as a ``GraphDef`` (with ``versions.producer``)."""
    out = bytearray()
    for node in nodes:
        body = _f_bytes(1, node.name.encode()) + _f_bytes(2, node.op.encode())
        body += b"".join(_f_bytes(3, i.encode()) for i in node.inputs)
        if node.device:
            body += _f_bytes(4, node.device.encode())
        for key in sorted(node.attr):
            entry = _f_bytes(1, key.encode()) + _f_bytes(2, _encode_attr(node.attr[key]))
            body += _f_bytes(5, entry)
        out += _f_bytes(1, body)
    out += _f_bytes(4, _f_varint(1, producer))
    return bytes(out)


def const_node(name: str, array: Any, typed: bool = False) -> NodeDef:
    """A ``Const`` node holding ``array`` (see :func:`encode_tensor_proto` for ``typed``)."""
    a = np.asarray(array)
    dt = DT_STRING if a.dtype == object or a.dtype.kind in "SU" else _DT_OF_NP[a.dtype]
    return NodeDef(name, "Const", attr={
        "dtype": AttrValue("type", dt),
        "value": AttrValue("tensor", encode_tensor_proto(a, typed=typed)),
    })


def write_graph_def(path: str | os.PathLike, nodes: Iterable[NodeDef]) -> None:
    """Write ``nodes`` as a binary GraphDef file."""
    with open(path, "wb") as f:
        f.write(encode_graph_def(nodes))


def graph_constants(nodes: Iterable[NodeDef],
                    regions: Mapping[str, memoryview] | None = None,
                    names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """{node name: array} of the ``Const`` nodes (and, given a memmapped package's
    ``regions``, its ``ImmutableConst`` nodes), optionally only those in ``names``."""
    wanted = None if names is None else set(names)
    out: dict[str, np.ndarray] = {}
    for node in nodes:
        if wanted is not None and node.name not in wanted:
            continue
        if node.op == "Const" and "value" in node.attr:
            out[node.name] = node.attr["value"].tensor(node.name)
        elif node.op == "ImmutableConst" and regions is not None:
            out[node.name] = _immutable_const(node, regions)
    return out


def _immutable_const(node: NodeDef, regions: Mapping[str, memoryview]) -> np.ndarray:
    try:
        dt = node.attr["dtype"].value
        shape = node.attr["shape"].value
        region = node.attr["memory_region_name"].value.decode("utf-8")
    except (KeyError, AttributeError, UnicodeDecodeError):
        raise TFFormatError(f"{node.name}: ImmutableConst without dtype/shape/region") from None
    if region not in regions:
        raise TFFormatError(f"{node.name}: memory region {region!r} is not in the package")
    if shape is None or any(d < 0 for d in shape):
        raise TFFormatError(f"{node.name}: ImmutableConst with an unknown shape")
    np_dtype = np.dtype(np.uint16) if dt == DT_BFLOAT16 else _np_dtype(dt, node.name)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    data = regions[region]
    if len(data) < nbytes:
        raise TFFormatError(f"{node.name}: region {region!r} holds {len(data)} bytes, "
                            f"{nbytes} needed")
    array = np.frombuffer(bytes(data[:nbytes]), np_dtype.newbyteorder("<")).astype(np_dtype)
    array = array.reshape(shape)
    return _bfloat16_to_float32(array) if dt == DT_BFLOAT16 else array


def read_graph_constants(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{node name: array} of every constant of a binary GraphDef (``.pb``) or memmapped
    package (``.pbmm``) file."""
    with open(path, "rb") as f:
        data = f.read()
    if is_memmapped_package(data):
        nodes, regions = read_memmapped_graph(data)
        return graph_constants(nodes, regions)
    try:
        return graph_constants(parse_graph_def(data))
    except TFFormatError as e:
        raise TFFormatError(f"{os.fspath(path)}: {e}") from None


# --------------------------------------------------------------------------------------
# Memmapped package (.pbmm)
# --------------------------------------------------------------------------------------

MEMMAPPED_PREFIX = "memmapped_package://"
MEMMAPPED_GRAPH = MEMMAPPED_PREFIX + "."
_MEMMAPPED_ALIGN = 64  # TensorFlow's Allocator::kAllocatorAlignment


def _memmapped_directory(data: memoryview) -> dict[str, tuple[int, int]] | None:
    """{region name: (offset, length)} or None when ``data`` is not a memmapped package."""
    if len(data) <= 8:
        return None
    (dir_offset,) = struct.unpack_from("<Q", data, len(data) - 8)
    if dir_offset > len(data) - 8:
        return None
    elements: list[tuple[str, int, int | None]] = []
    try:
        for number, wire, value in iter_fields(data[dir_offset:len(data) - 8]):
            if number != 1 or wire != WT_LEN:
                return None
            name, offset, length = "", 0, None
            for n2, w2, v2 in iter_fields(value):
                if n2 == 1 and w2 == WT_VARINT:
                    offset = v2
                elif n2 == 2 and w2 == WT_LEN:
                    name = bytes(v2).decode("utf-8")
                elif n2 == 3 and w2 == WT_VARINT:
                    length = v2
            elements.append((name, offset, length))
    except (TFFormatError, UnicodeDecodeError):
        return None
    if not elements or not all(n.startswith(MEMMAPPED_PREFIX) for n, _, _ in elements):
        return None
    regions: dict[str, tuple[int, int]] = {}
    end = dir_offset
    for name, offset, length in reversed(elements):  # lengths from the following offsets
        if offset >= end:
            return None
        regions[name] = (offset, length if length is not None else end - offset)
        end = offset
    return regions


def is_memmapped_package(data: bytes | memoryview) -> bool:
    """Whether ``data`` is a TensorFlow memmapped package holding a graph."""
    regions = _memmapped_directory(memoryview(data))
    return regions is not None and MEMMAPPED_GRAPH in regions


def read_memmapped_graph(data: bytes | memoryview) -> tuple[list[NodeDef], dict[str, memoryview]]:
    """A memmapped package -> (graph nodes, {region name: bytes})."""
    mv = memoryview(data)
    directory = _memmapped_directory(mv)
    if directory is None or MEMMAPPED_GRAPH not in directory:
        raise TFFormatError("not a TensorFlow memmapped package (no graph region)")
    regions = {name: mv[off:off + size] for name, (off, size) in directory.items()}
    return parse_graph_def(regions[MEMMAPPED_GRAPH]), regions


def write_memmapped_graph(path: str | os.PathLike, nodes: Iterable[NodeDef],
                          min_bytes: int = 10000) -> None:
    """Write ``nodes`` as a memmapped package, turning numeric ``Const`` nodes of at least
    ``min_bytes`` into ``ImmutableConst`` nodes (the layout TensorFlow's converter writes:
    regions 64-byte aligned, directory elements with offset, name and length)."""
    out = bytearray()
    elements: list[tuple[str, int, int]] = []
    used: set[str] = set()
    converted: list[NodeDef] = []
    for node in nodes:
        array = node.attr["value"].tensor(node.name) if node.op == "Const" else None
        if array is None or array.dtype not in _DT_OF_NP or array.nbytes < min_bytes:
            converted.append(node)
            continue
        region = re.sub(r"[^A-Za-z0-9_.]", "_", node.name)
        while region in used:
            region += "_"
        used.add(region)
        out.extend(b"\x00" * (-len(out) % _MEMMAPPED_ALIGN))
        raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        elements.append((MEMMAPPED_PREFIX + region, len(out), len(raw)))
        out.extend(raw)
        converted.append(NodeDef(node.name, "ImmutableConst", list(node.inputs), {
            "dtype": AttrValue("type", _DT_OF_NP[array.dtype]),
            "shape": AttrValue("shape", array.shape),
            "memory_region_name": AttrValue("s", MEMMAPPED_PREFIX + region),
        }, node.device))
    graph = encode_graph_def(converted)
    elements.append((MEMMAPPED_GRAPH, len(out), len(graph)))
    out.extend(graph)
    directory = b"".join(  # offset, name and (as TensorFlow 2 writes it) length
        _f_bytes(1, (_f_varint(1, off) if off else b"") + _f_bytes(2, name.encode())
                 + _f_varint(3, size))
        for name, off, size in elements)
    dir_offset = len(out)
    out.extend(directory)
    out.extend(struct.pack("<Q", dir_offset))
    with open(path, "wb") as f:
        f.write(out)
