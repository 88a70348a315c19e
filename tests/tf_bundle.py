"""A minimal writer of TensorFlow V2 checkpoint bundles, for tests that need checkpoints TensorFlow would not write
(unknown variables, several shards, compressed blocks). The ground truth is the committed fixtures in
tests/fixtures/tf_checkpoints, written by TensorFlow itself; this writer only rearranges what the reader read from them.
"""

from __future__ import annotations

import struct

import numpy as np

from electra_jax.convert.tf_checkpoint import TABLE_MAGIC, crc32c, mask_crc

DTYPES = {np.dtype("float32"): 1, np.dtype("int64"): 9, np.dtype("int32"): 3}


def varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
  return varint(number << 3 | wire) + payload


def entry_proto(dtype: int, shape, shard: int, offset: int, size: int, crc: int) -> bytes:
  dims = b"".join(field(2, 2, varint(len(d)) + d) for d in (field(1, 0, varint(s)) for s in shape))
  return (field(1, 0, varint(dtype)) + field(2, 2, varint(len(dims)) + dims) + field(3, 0, varint(shard))
          + field(4, 0, varint(offset)) + field(5, 0, varint(size)) + field(6, 5, struct.pack("<I", crc)))


def block(entries: list[tuple[bytes, bytes]], kind: int = 0) -> bytes:
  body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
  body += struct.pack("<II", 0, 1)
  return body + bytes([kind]) + struct.pack("<I", mask_crc(crc32c(body + bytes([kind]))))


def write_bundle(prefix: str, tensors: dict[str, np.ndarray], num_shards: int = 1, kind: int = 0) -> None:
  """Writes PREFIX.index and PREFIX.data-*-of-*; tensors go round-robin over the shards (sorted by name)."""
  data = [bytearray() for _ in range(num_shards)]
  entries = []
  for i, name in enumerate(sorted(tensors)):
    x = np.asarray(tensors[name])   # tobytes() is C order; ascontiguousarray would make a scalar 1-d
    shard = i % num_shards
    raw = x.tobytes()
    entries.append((name.encode(), entry_proto(DTYPES[x.dtype], x.shape, shard, len(data[shard]), len(raw),
                                               mask_crc(crc32c(raw)))))
    data[shard] += raw
  header = field(1, 0, varint(num_shards)) + field(3, 2, varint(2) + field(1, 0, varint(1)))
  data_block = block([(b"", header)] + entries, kind)
  index = bytearray(data_block)
  meta_offset = len(index)
  index += block([])
  index_offset = len(index)
  handle = varint(0) + varint(len(data_block) - 5)
  index += block([(entries[-1][0] if entries else b"", handle)])
  footer = (varint(meta_offset) + varint(len(block([])) - 5) + varint(index_offset)
            + varint(len(index) - index_offset - 5))
  index += footer + b"\0" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
  with open(prefix + ".index", "wb") as f:
    f.write(index)
  for shard, content in enumerate(data):
    with open(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}", "wb") as f:
      f.write(content)
