"""GetEmbedding's hand-written chunk encoding is protobuf's own, both ways."""

from __future__ import annotations

import numpy as np
import pytest

from histosic.api.v1 import embedding_pb2
from histosic.service.wire import decode_chunk, encode_chunk


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 1 << 20, (1 << 40) + 3])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 300_000])
def test_encode_chunk_is_protobufs_serialization(offset: int, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    ours = encode_chunk(memoryview(data), offset)
    theirs = embedding_pb2.GetEmbeddingResponse(chunk=data, offset=offset).SerializeToString()
    assert ours == theirs
    parsed = embedding_pb2.GetEmbeddingResponse.FromString(ours)
    assert parsed.chunk == data and parsed.offset == offset
    got = decode_chunk(theirs)
    assert got is not None and got[0] == offset and bytes(got[1]) == data


def test_decode_chunk_takes_any_field_order() -> None:
    # offset first, then chunk: valid protobuf that another server could send
    raw = b"\x40\x05" + b"\x3a\x03abc"
    got = decode_chunk(raw)
    assert got is not None and got[0] == 5 and bytes(got[1]) == b"abc"
    assert embedding_pb2.GetEmbeddingResponse.FromString(raw).offset == 5


@pytest.mark.parametrize(
    "raw",
    [
        embedding_pb2.GetEmbeddingResponse(
            features_dtype="float32", chunk=b"x"
        ).SerializeToString(),
        b"\x3a\x05ab",  # chunk longer than the message
        b"\x40\xff\xff",  # varint cut short
        b"\x40" + b"\xff" * 10 + b"\x01",  # varint over 64 bits
    ],
)
def test_decode_chunk_declines_anything_else(raw: bytes) -> None:
    assert decode_chunk(raw) is None
