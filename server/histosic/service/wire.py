"""GetEmbedding's chunk messages in protobuf wire format, written and read without a copy.

``GetEmbeddingResponse`` messages after the first carry only ``bytes chunk = 7`` and
``int64 offset = 8``. Building such a message, serializing it, parsing it and reading ``chunk``
each copy the megabyte; these two functions encode straight from the feature matrix and decode to
a view of the received bytes, so each side copies once. The encoding is standard protobuf (the
fields in field-number order, as protobuf itself writes them); :func:`decode_chunk` accepts any
field order and answers ``None`` for anything else, for the caller to parse in full.
"""

from __future__ import annotations

__all__ = ["decode_chunk", "encode_chunk"]

_CHUNK_TAG = (7 << 3) | 2  # field 7, length-delimited
_OFFSET_TAG = (8 << 3) | 0  # field 8, varint


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_chunk(chunk: memoryview, offset: int) -> bytes:
    """The wire bytes of ``GetEmbeddingResponse(chunk=chunk, offset=offset)``."""
    parts: list[bytes | memoryview] = []
    if len(chunk):  # proto3 leaves empty and zero fields out
        parts += [bytes((_CHUNK_TAG,)), _varint(len(chunk)), chunk]
    if offset:
        parts += [bytes((_OFFSET_TAG,)), _varint(offset)]
    return b"".join(parts)


def _read_varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(data):
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            break
    raise ValueError("malformed varint")


def decode_chunk(raw: bytes) -> tuple[int, memoryview] | None:
    """``(offset, chunk)`` of a message holding only those two fields (chunk a view of ``raw``),
    or None when it holds anything else or is malformed."""
    data = memoryview(raw)
    offset, chunk, i = 0, data[:0], 0
    try:
        while i < len(data):
            tag = data[i]
            i += 1
            if tag == _CHUNK_TAG:
                size, i = _read_varint(data, i)
                if i + size > len(data):
                    return None
                chunk, i = data[i : i + size], i + size
            elif tag == _OFFSET_TAG:
                offset, i = _read_varint(data, i)
                if offset >= 1 << 63:
                    return None
            else:
                return None
    except ValueError:
        return None
    return offset, chunk
