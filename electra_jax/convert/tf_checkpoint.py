"""A reader for TensorFlow's checkpoint bundle format (V2) in plain Python and numpy: no TensorFlow import.

    ckpt = TFCheckpoint.open("electra_small/")          # a folder (its `checkpoint` file), a prefix or PREFIX.index
    ckpt.entries["electra/embeddings/word_embeddings"]  # TensorEntry(dtype, shape, shard_id, offset, size, crc32c)
    table = ckpt.read("electra/embeddings/word_embeddings")   # numpy array; its masked CRC-32C is checked
    ckpt.check_files()                                  # every shard present and long enough for its entries

A V2 checkpoint is PREFIX.index plus PREFIX.data-00000-of-0000N. The index is a LevelDB-format table (an SSTable:
data blocks of prefix-compressed key/value entries, an index block, a 48-byte footer with a magic number; each block
followed by a compression byte and a masked CRC-32C) mapping each variable name to a BundleEntryProto, with a
BundleHeaderProto under the empty key. The few protobuf fields needed are decoded by hand. TensorFlow writes bundle
indexes uncompressed; a snappy-compressed block is refused with a clear error, as are big-endian bundles and
partitioned (sliced) variables.

Every problem raises `TFCheckpointError` with one line naming the file (and the variable, where there is one).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import struct

import numpy as np

from electra_jax.convert import ConversionError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> numpy dtype (the types a model checkpoint holds).
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
           6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"), 19: np.dtype("<f2"),
           22: np.dtype("<u4"), 23: np.dtype("<u8")}
_DT_STRING, _DT_BFLOAT16 = 7, 14


class TFCheckpointError(ConversionError):
  """A TensorFlow checkpoint that cannot be read: missing or truncated files, bad checksums, another format."""


# ------------------------------------------------------------------------------------------------ CRC-32C
_POLY = 0x82F63B78   # Castagnoli, reflected


def _byte_table() -> np.ndarray:
  t = np.arange(256, dtype=np.uint32)
  for _ in range(8):
    t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
  return t


_TABLE = _byte_table()
_TABLE_LIST = [int(x) for x in _TABLE]
_BITS = ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1).astype(bool)   # [256, 8]


def _raw_scalar(state: int, data: bytes) -> int:
  """The CRC register after `data` from `state` (no initial or final inversion)."""
  t = _TABLE_LIST
  for b in data:
    state = t[(state ^ b) & 0xFF] ^ (state >> 8)
  return state


_TABLE16: list[np.ndarray] = []


def _table16() -> np.ndarray:
  """The register after two zero bytes from each 16-bit state (built once, 256 KiB)."""
  if not _TABLE16:
    x = np.arange(65536, dtype=np.uint32)
    for _ in range(2):
      x = _TABLE[x & 0xFF] ^ (x >> 8)
    _TABLE16.append(x)
  return _TABLE16[0]


class _Linear:
  """A GF(2)-linear map on the 32-bit CRC register, as the images of its 32 bits (here: n zero bytes fed in)."""

  def __init__(self, images: np.ndarray):
    self.images = images.astype(np.uint32)   # [32]
    self.tables = [np.bitwise_xor.reduce(np.where(_BITS, self.images[None, 8 * k:8 * k + 8], 0), axis=1
                                         ).astype(np.uint32) for k in range(4)]

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.uint32)
    t = self.tables
    return t[0][x & 0xFF] ^ t[1][(x >> 8) & 0xFF] ^ t[2][(x >> 16) & 0xFF] ^ t[3][x >> 24]

  def then(self, other: "_Linear") -> "_Linear":
    """self followed by other."""
    return _Linear(other(self.images))

  @classmethod
  def zeros(cls, n: int) -> "_Linear":
    one = cls(np.array([_raw_scalar(1 << i, b"\0") for i in range(32)], np.uint32))
    result = cls(np.array([1 << i for i in range(32)], np.uint32))
    while n:
      if n & 1:
        result = result.then(one)
      one = one.then(one)
      n >>= 1
    return result


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
  """CRC-32C (Castagnoli) of `data`, as TensorFlow's crc32c::Value.

  Long inputs are cut into 2^k lanes that numpy advances together byte by byte, and the lane registers are then
  combined pairwise with the linear map of "shift by n zero bytes" (leading zero bytes do not change a register that
  starts at 0, so the front is zero-padded to whole lanes).
  """
  buf = np.frombuffer(memoryview(data).cast("B"), np.uint8) if not isinstance(data, np.ndarray) else \
      np.ascontiguousarray(data).reshape(-1).view(np.uint8)
  n = buf.size
  if n <= 4096:
    raw = _raw_scalar(0, buf.tobytes())
  else:
    lanes = 1 << min(16, int(np.log2(n // 256)))
    length = -(-n // lanes)
    length += length % 2                                            # whole 16-bit words per lane
    padded = np.zeros(lanes * length, np.uint8)
    padded[lanes * length - n:] = buf
    words = np.ascontiguousarray(padded.reshape(lanes, length).view("<u2").T)   # [length / 2, lanes]
    table = _table16()
    state = np.zeros(lanes, np.uint32)
    low = np.empty(lanes, np.uint32)
    for row in words:   # two bytes per step: state = T16[(state ^ word) & 0xFFFF] ^ (state >> 16)
      np.bitwise_xor(state, row, out=low)
      np.bitwise_and(low, 0xFFFF, out=low)
      np.right_shift(state, 16, out=state)
      np.bitwise_xor(state, table[low], out=state)
    shift = _Linear.zeros(length)
    while state.size > 1:
      state = shift(state[0::2]) ^ state[1::2]
      shift = shift.then(shift)
    raw = int(state[0])
  return (_Linear.zeros(n)(np.uint32(0xFFFFFFFF)).item() ^ raw ^ 0xFFFFFFFF) & 0xFFFFFFFF


def mask_crc(crc: int) -> int:
  """TensorFlow's (and LevelDB's) crc32c::Mask: rotate right by 15 bits and add a constant."""
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------ protobuf, by hand
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("truncated varint")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
  """(field number, value) pairs of a serialized protobuf message: ints for varint/fixed, bytes for length-delimited."""
  out, pos = [], 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 1:
      value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
    elif wire == 2:
      size, pos = _varint(buf, pos)
      value, pos = bytes(buf[pos:pos + size]), pos + size
    elif wire == 5:
      value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos > len(buf):
      raise ValueError("truncated protobuf field")
    out.append((field, value))
  return out


def _signed64(v: int) -> int:
  return v - (1 << 64) if v >= 1 << 63 else v


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  """One BundleEntryProto: where a tensor's bytes are and their masked CRC-32C."""
  dtype: int                 # TensorFlow DataType enum
  shape: tuple[int, ...]
  shard_id: int
  offset: int
  size: int
  crc32c: int                # masked, as stored
  sliced: bool = False       # a partitioned variable (its slices are stored under other keys)

  @property
  def numpy_dtype(self) -> np.dtype | None:
    if self.dtype == _DT_BFLOAT16:
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      return np.dtype(ml_dtypes.bfloat16)
    return _DTYPES.get(self.dtype)


def _parse_entry(value: bytes) -> TensorEntry:
  kw = dict(dtype=0, shape=(), shard_id=0, offset=0, size=0, crc32c=0, sliced=False)
  for field, v in _fields(value):
    if field == 1:
      kw["dtype"] = int(v)
    elif field == 2:
      dims = []
      for f2, dim in _fields(v):
        if f2 == 2:
          dims.append(next((_signed64(s) for f3, s in _fields(dim) if f3 == 1), 0))
        elif f2 == 3 and v:
          raise ValueError("a tensor of unknown rank")
      kw["shape"] = tuple(dims)
    elif field == 3:
      kw["shard_id"] = int(v)
    elif field == 4:
      kw["offset"] = int(v)
    elif field == 5:
      kw["size"] = int(v)
    elif field == 6:
      kw["crc32c"] = int(v)
    elif field == 7:
      kw["sliced"] = True
  return TensorEntry(**kw)


# ------------------------------------------------------------------------------------------------ the SSTable
def _read_block(data: bytes, offset: int, size: int, path: str) -> bytes:
  end = offset + size + BLOCK_TRAILER_SIZE
  if end > len(data):
    raise TFCheckpointError(f"{path}: truncated index (a block ends at byte {end}, the file has {len(data)})")
  block, kind = data[offset:offset + size], data[offset + size]
  stored = struct.unpack_from("<I", data, offset + size + 1)[0]
  if mask_crc(crc32c(block + bytes([kind]))) != stored:
    raise TFCheckpointError(f"{path}: checksum mismatch in the index block at byte {offset} (corrupt file)")
  if kind == 1:
    raise TFCheckpointError(f"{path}: snappy-compressed index blocks are not supported (TensorFlow writes checkpoint "
                            f"indexes uncompressed; re-save the checkpoint with TensorFlow)")
  if kind != 0:
    raise TFCheckpointError(f"{path}: unknown block compression type {kind}")
  return block


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
  """Key/value pairs of one block, undoing the prefix compression of the keys."""
  if len(block) < 4:
    raise ValueError("block too short")
  num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
  limit = len(block) - 4 * (num_restarts + 1)
  if limit < 0:
    raise ValueError("bad restart count")
  out, pos, key = [], 0, b""
  while pos < limit:
    shared, pos = _varint(block, pos)
    unshared, pos = _varint(block, pos)
    value_len, pos = _varint(block, pos)
    if shared > len(key) or pos + unshared + value_len > limit:
      raise ValueError("corrupt block entry")
    key = key[:shared] + block[pos:pos + unshared]
    pos += unshared
    out.append((key, block[pos:pos + value_len]))
    pos += value_len
  return out


def read_table(path: str) -> list[tuple[bytes, bytes]]:
  """All (key, value) pairs of a LevelDB-format table file, in key order, with every block checksum verified."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
    raise TFCheckpointError(f"{path}: not a TensorFlow checkpoint index (no table magic number at its end); "
                            f"expected the .index file of a V2 checkpoint")
  try:
    footer = data[len(data) - FOOTER_SIZE:]
    _, pos = _varint(footer, 0)            # metaindex handle (unused: TensorFlow writes an empty one)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    if index_offset + index_size + BLOCK_TRAILER_SIZE > len(data) - FOOTER_SIZE:
      raise ValueError("index handle out of range")
    out = []
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, path)):
      offset, p = _varint(handle, 0)
      size, _ = _varint(handle, p)
      if offset + size + BLOCK_TRAILER_SIZE > index_offset:
        raise ValueError("data block handle out of range")
      out.extend(_block_entries(_read_block(data, offset, size, path)))
  except (ValueError, struct.error, IndexError) as e:
    raise TFCheckpointError(f"{path}: corrupt checkpoint index ({e})") from None
  return out


# ------------------------------------------------------------------------------------------------ the bundle
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def resolve_prefix(path: str | os.PathLike) -> str:
  """A checkpoint folder, prefix, PREFIX.index or data file -> the prefix (PREFIX.index must exist)."""
  path = os.fspath(path)
  if path.endswith(".index"):
    path = path[:-len(".index")]
  path = _DATA_SUFFIX.sub("", path)
  if os.path.isdir(path):
    return _prefix_in_folder(path)
  if os.path.isfile(path + ".index"):
    return path
  if os.path.isfile(path) or os.path.isfile(path + ".meta") and not glob.glob(path + ".data-*"):
    raise TFCheckpointError(f"{path}: a V1 TensorFlow checkpoint or another file, not a V2 checkpoint "
                            f"(no {os.path.basename(path)}.index); re-save it with tf.train.Saver (V2)")
  raise TFCheckpointError(f"{path}: no TensorFlow checkpoint here (no {os.path.basename(path)}.index)")


def _prefix_in_folder(folder: str) -> str:
  state = os.path.join(folder, "checkpoint")
  if os.path.isfile(state):
    with open(state, encoding="utf-8", errors="replace") as f:
      m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.M)
    if m:
      name = m.group(1)
      for candidate in (name if os.path.isabs(name) else os.path.join(folder, name),
                        os.path.join(folder, os.path.basename(name))):   # paths from the training machine
        if os.path.isfile(candidate + ".index"):
          return candidate
      raise TFCheckpointError(f"{state}: names {name}, but {os.path.join(folder, os.path.basename(name))}.index "
                              f"does not exist")
  indexes = sorted(glob.glob(os.path.join(folder, "*.index")))
  if not indexes:
    raise TFCheckpointError(f"{folder}: no TensorFlow checkpoint (no `checkpoint` file and no *.index)")

  def step(p):
    m = re.search(r"-(\d+)\.index$", p)
    return int(m.group(1)) if m else -1

  return max(indexes, key=lambda p: (step(p), p))[:-len(".index")]


class TFCheckpoint:
  """The index of a V2 checkpoint, and its tensors read on demand (with their checksums verified)."""

  def __init__(self, prefix: str, header: dict, entries: dict[str, TensorEntry]):
    self.prefix = prefix
    self.header = header
    self.entries = entries

  @classmethod
  def open(cls, path: str | os.PathLike) -> "TFCheckpoint":
    prefix = resolve_prefix(path)
    index = prefix + ".index"
    header, entries = None, {}
    for key, value in read_table(index):
      try:
        if key == b"":
          header = {"num_shards": 1, "endianness": 0}
          for field, v in _fields(value):
            if field == 1:
              header["num_shards"] = int(v)
            elif field == 2:
              header["endianness"] = int(v)
          continue
        name = key.decode("utf-8")
        entries[name] = _parse_entry(value)
      except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise TFCheckpointError(f"{index}: entry {key!r} is not a BundleEntryProto ({e})") from None
    if header is None:
      raise TFCheckpointError(f"{index}: a table without a BundleHeaderProto (not a TensorFlow checkpoint index)")
    if header["endianness"] != 0:
      raise TFCheckpointError(f"{index}: a big-endian checkpoint; only little-endian bundles are supported")
    for name, e in entries.items():
      if not 0 <= e.shard_id < header["num_shards"]:
        raise TFCheckpointError(f"{index}: variable {name} is in shard {e.shard_id} of {header['num_shards']}")
    return cls(prefix, header, entries)

  def data_file(self, shard: int) -> str:
    return f"{self.prefix}.data-{shard:05d}-of-{self.header['num_shards']:05d}"

  def check_files(self, names: list[str] | None = None) -> None:
    """Every shard that holds one of `names` (default: all) exists and is long enough for its entries."""
    sizes: dict[int, int] = {}
    for name in sorted(self.entries if names is None else names):
      e = self.entries[name]
      if e.shard_id not in sizes:
        path = self.data_file(e.shard_id)
        if not os.path.isfile(path):
          raise TFCheckpointError(f"{path}: missing data shard (it holds variable {name})")
        sizes[e.shard_id] = os.path.getsize(path)
      if e.offset + e.size > sizes[e.shard_id]:
        raise TFCheckpointError(f"{self.data_file(e.shard_id)}: truncated ({sizes[e.shard_id]} bytes) — variable "
                                f"{name} needs bytes {e.offset}..{e.offset + e.size}")

  def read(self, name: str) -> np.ndarray:
    """The tensor `name` as a numpy array (its own copy), after checking its masked CRC-32C."""
    if name not in self.entries:
      raise TFCheckpointError(f"{self.prefix}.index: no variable {name}")
    e = self.entries[name]
    where = f"{self.data_file(e.shard_id)}: variable {name}"
    if e.sliced:
      raise TFCheckpointError(f"{where} is partitioned into slices, which is not supported")
    dtype = e.numpy_dtype
    if dtype is None:
      kind = "string" if e.dtype == _DT_STRING else f"DataType {e.dtype}"
      raise TFCheckpointError(f"{where} has unsupported type {kind}")
    count = int(np.prod(e.shape, dtype=np.int64))
    if count * dtype.itemsize != e.size:
      raise TFCheckpointError(f"{where}: index entry of {e.size} bytes does not fit shape {e.shape} of {dtype}")
    self.check_files([name])
    with open(self.data_file(e.shard_id), "rb") as f:
      f.seek(e.offset)
      raw = f.read(e.size)
    if len(raw) != e.size:
      raise TFCheckpointError(f"{where}: truncated data file")
    if mask_crc(crc32c(raw)) != e.crc32c:
      raise TFCheckpointError(f"{where}: checksum mismatch (the data file is corrupt)")
    return np.frombuffer(raw, dtype).reshape(e.shape).copy()

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: e.shape for k, e in self.entries.items()}
