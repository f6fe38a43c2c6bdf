"""HDF5 embedding store: round trip, atomic writes, resume, and Trident/CLAM files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from histosic.errors import CorruptFileError, EmbeddingNotFoundError, OutputExistsError
from histosic.store import (
    EmbeddingMeta,
    Embeddings,
    EmbeddingWriter,
    partial_path,
    read_embeddings,
    read_meta,
    write_embeddings,
)


def _meta(**kw: object) -> EmbeddingMeta:
    base: dict[str, object] = {
        "slide_path": "/data/s.svs",
        "slide_fingerprint": "sha256:abc",
        "level0_width": 4000,
        "level0_height": 3000,
        "mpp": 0.25,
        "target_mpp": 0.5,
        "patch_size": 256,
        "patch_size_level0": 512,
        "stride_level0": 256,
        "overlap": 0.5,
        "model": "resnet18-random",
        "weights_hash": "resnet18-random:seed=0",
        "tissue_threshold": 0.5,
        "extra": {"reader": "openslide"},
    }
    base.update(kw)
    return EmbeddingMeta(**base)  # type: ignore[arg-type]


def _emb(n: int = 10, d: int = 8) -> Embeddings:
    rng = np.random.default_rng(0)
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
    return Embeddings(
        features=rng.normal(size=(n, d)).astype(np.float32),
        coords=coords,
        meta=_meta(),
        tissue_fraction=rng.random(n).astype(np.float32),
        white_fraction=rng.random(n).astype(np.float32),
    )


def test_round_trip(tmp_path: Path) -> None:
    emb = _emb()
    path = write_embeddings(tmp_path / "a.h5", emb)
    back = read_embeddings(path)
    assert np.array_equal(back.features, emb.features)
    assert np.array_equal(back.coords, emb.coords)
    assert back.tissue_fraction is not None and back.white_fraction is not None
    assert np.array_equal(back.tissue_fraction, emb.tissue_fraction)  # type: ignore[arg-type]
    assert back.meta.settings_key() == emb.meta.settings_key()
    assert back.meta.overlap == 0.5 and back.meta.extra == {"reader": "openslide"}
    assert read_meta(path).patch_size_level0 == 512
    assert not partial_path(path).exists()
    # Trident/CLAM readers look for these on /coords.
    with h5py.File(path, "r") as f:
        attrs = f["coords"].attrs
        assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 512
        assert attrs["level0_magnification"] == pytest.approx(40.0)
        assert attrs["target_magnification"] == pytest.approx(20.0)
        assert attrs["overlap"] == 128  # pixels, as Trident writes it
        assert f.attrs["overlap"] == 0.5


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_embeddings(tmp_path / "a.h5", _emb())
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_embeddings(path, _emb())
    write_embeddings(path, _emb(n=4), overwrite=True)
    assert read_embeddings(path).n_patches == 4


def test_writer_resumes_a_partial_file(tmp_path: Path) -> None:
    emb = _emb(n=10)
    path = tmp_path / "r.h5"
    w = EmbeddingWriter(path, emb.meta, emb.coords, emb.dim)
    w.write(emb.features[:4], emb.tissue_fraction[:4], emb.white_fraction[:4])  # type: ignore[index]
    w.close()  # as if killed: the partial stays, the final name does not exist
    assert partial_path(path).exists() and not path.exists()
    with pytest.raises(EmbeddingNotFoundError, match="did not complete"):
        read_embeddings(path)
    w2 = EmbeddingWriter(path, emb.meta, emb.coords, emb.dim)
    assert w2.n_done == 4
    w2.write(emb.features[4:], emb.tissue_fraction[4:], emb.white_fraction[4:])  # type: ignore[index]
    w2.finish()
    assert np.array_equal(read_embeddings(path).features, emb.features)


def test_writer_starts_over_when_settings_differ(tmp_path: Path) -> None:
    emb = _emb(n=6)
    path = tmp_path / "r.h5"
    w = EmbeddingWriter(path, emb.meta, emb.coords, emb.dim)
    w.write(emb.features[:3], emb.tissue_fraction[:3], emb.white_fraction[:3])  # type: ignore[index]
    w.close()
    other = EmbeddingWriter(path, _meta(model="handcrafted"), emb.coords, emb.dim)
    assert other.n_done == 0
    other.discard()
    assert not partial_path(path).exists()


def test_read_a_trident_style_file(tmp_path: Path) -> None:
    # Trident: features (n, d) and coords with its attributes; overlap in pixels.
    path = tmp_path / "slide.h5"
    n, d = 7, 16
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((n, d), np.float32))
        c = f.create_dataset("coords", data=np.arange(2 * n).reshape(n, 2) * 448)
        c.attrs["patch_size"] = 224
        c.attrs["patch_size_level0"] = 448
        c.attrs["level0_magnification"] = 40
        c.attrs["target_magnification"] = 20
        c.attrs["overlap"] = 0
        c.attrs["name"] = "slide"
        c.attrs["level0_width"] = 10000
        c.attrs["level0_height"] = 8000
        f.attrs["encoder"] = "conch_v15"
    emb = read_embeddings(path)
    assert emb.features.shape == (n, d) and emb.coords.dtype == np.int64
    m = emb.meta
    assert (m.patch_size, m.patch_size_level0, m.stride_level0) == (224, 448, 448)
    assert m.mpp == pytest.approx(0.25) and m.target_mpp == pytest.approx(0.5)
    assert m.model == "conch_v15" and m.overlap == 0
    assert emb.nuisance() is None
    assert emb.grid_index()[1].tolist() == [2, 2]


def test_read_a_clam_style_file_with_batch_axis(tmp_path: Path) -> None:
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((1, 5, 4), np.float32))
        c = f.create_dataset("coords", data=np.zeros((1, 5, 2), np.int32))
        c.attrs["patch_size"] = 256
        c.attrs["patch_level"] = 0
    emb = read_embeddings(path)
    assert emb.features.shape == (5, 4) and emb.coords.shape == (5, 2)


def test_not_an_embedding_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"nope" * 100)
    with pytest.raises(CorruptFileError, match="not a readable HDF5"):
        read_embeddings(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(CorruptFileError, match="no 'features'"):
        read_embeddings(other)
    with pytest.raises(EmbeddingNotFoundError):
        read_embeddings(tmp_path / "missing.h5")
