"""The ``he-features`` backbone: stain-robust H&E nuclear and texture statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from conftest import SyntheticSlide
from torch import nn

from histosic.embed.builders.features import HandcraftedFeatures, HEFeatures
from histosic.embed.pipeline import embed_slide
from histosic.embed.registry import get_model_info, list_models, load_model, weights_id
from histosic.errors import InvalidInputError
from histosic.features import handcrafted
from histosic.features.hefeatures import DIM, FEATURE_SCALE, NAMES, extract_raw, he_features
from histosic.store import read_embeddings

torch.set_num_threads(1)  # the test machine's cores are shared

# Ruifrok & Johnston stain vectors (haematoxylin, eosin, DAB) in optical density, as rows.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def _stains(n_nuclei: int, seed: int, size: int = 128, radius: float = 4.0) -> npt.NDArray[Any]:
    """Stain concentrations (size, size, 3): eosin-pink tissue with dark haematoxylin discs."""
    rng = np.random.default_rng(seed)
    conc = np.zeros((size, size, 3))
    conc[..., 0] = 0.05 + 0.02 * rng.standard_normal((size, size))
    conc[..., 1] = 0.35 + 0.05 * rng.standard_normal((size, size))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_nuclei):
        cy, cx = rng.uniform(radius, size - radius, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        conc[disc, 0] = 0.9 + 0.1 * rng.standard_normal(int(disc.sum()))
    return conc


def _rgb(conc: npt.NDArray[Any], od_scale: float = 1.0) -> npt.NDArray[np.uint8]:
    """RGB of stain concentrations, with all optical densities multiplied by ``od_scale``."""
    od = np.clip(conc, 0.0, None) @ _RGB_FROM_HED * od_scale
    rgb: npt.NDArray[np.uint8] = np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).round().astype(np.uint8)
    return rgb


def _features(model: nn.Module, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        out: npt.NDArray[np.float64] = model(x).numpy().astype(np.float64)
    return out


def test_names_and_scales_match_the_dimension() -> None:
    assert len(NAMES) == DIM == HEFeatures.DIM == len(FEATURE_SCALE) == 54
    assert len(set(NAMES)) == DIM
    assert all(s > 0 for s in FEATURE_SCALE)


def test_output_shape_dtype_finite_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    # Tissue-like patches, plus a blank white one and a saturated black one.
    rgb = np.stack([_rgb(_stains(k, seed=k)) for k in (0, 10, 30)])
    rgb = np.concatenate(
        [rgb, np.full((1, 128, 128, 3), 255, np.uint8), np.zeros((1, 128, 128, 3), np.uint8)]
    )
    rgb = np.concatenate([rgb, rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)])
    model = HEFeatures()
    a = _features(model, rgb)
    assert a.shape == (6, DIM)
    assert model(torch.zeros(2, 3, 128, 128)).dtype == torch.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, _features(HEFeatures(), rgb))
    # Batching does not change a patch's features (no per-batch statistics).
    np.testing.assert_allclose(a[1:2], _features(model, rgb[1:2]), rtol=1e-5, atol=1e-6)
    # The module's output is the raw features divided by the fixed scale.
    scale = np.asarray(FEATURE_SCALE)
    np.testing.assert_allclose(a, extract_raw(rgb) / scale, rtol=1e-5, atol=1e-6)
    assert extract_raw(np.zeros((0, 128, 128, 3), np.uint8)).shape == (0, DIM)
    np.testing.assert_array_equal(a, he_features(rgb))  # the module is a thin wrapper


@pytest.mark.parametrize(
    "bad",
    [np.zeros((128, 128, 3), np.uint8), np.zeros((2, 3, 128, 128), np.uint8), [[1, 2], [3]]],
)
def test_bad_input_is_invalid_input(bad: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"expected \(n, h, w, 3\) uint8 patches"):
        extract_raw(bad)
    with pytest.raises(InvalidInputError):
        he_features(bad)
    with pytest.raises(InvalidInputError, match=r"expected \(n, h, w, 3\) RGB patches"):
        handcrafted.handcrafted_features(bad)


def test_handcrafted_numpy_matches_torch_reference() -> None:
    """The NumPy features equal a torch computation of the same statistics (float32 rounding):
    channel means and unbiased SDs, Sobel gradient magnitude, Laplacian, white fraction."""
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    x = rng.random((3, 64, 64, 3), dtype=np.float32)
    x[0] = 0.9 + 0.1 * x[0]  # mostly white
    f = handcrafted.handcrafted_features(x)
    assert f.shape == (3, handcrafted.DIM) and f.dtype == np.float32
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    flat = t.flatten(2)
    ref_rgb = torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1).numpy()
    np.testing.assert_allclose(f[:, :6], ref_rgb, rtol=1e-5, atol=1e-6)
    grey = (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).unsqueeze(1)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    grad = F.conv2d(grey, torch.stack([sobel, sobel.T]).unsqueeze(1))
    mag = grad.pow(2).sum(dim=1).sqrt().flatten(1)
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    ref_tex = torch.stack(
        [mag.mean(dim=1), mag.std(dim=1), F.conv2d(grey, lap).abs().flatten(1).mean(dim=1)], 1
    ).numpy()
    np.testing.assert_allclose(f[:, [32, 33, 36]], ref_tex, rtol=1e-5, atol=1e-6)
    white = (t.amin(dim=1) >= 220.0 / 255.0).flatten(1).float().mean(dim=1).numpy()
    np.testing.assert_allclose(f[:, 42], white)
    # uint8 input is read as value / 255; the torch module wraps the same function.
    u8 = (x * 255).round().astype(np.uint8)
    np.testing.assert_allclose(
        handcrafted.handcrafted_features(u8),
        handcrafted.handcrafted_features(u8.astype(np.float32) / 255.0),
    )
    np.testing.assert_array_equal(
        _features(HandcraftedFeatures(), u8), handcrafted.handcrafted_features(u8)
    )


def test_more_nuclei_raise_nuclear_density() -> None:
    rgb = np.stack([_rgb(_stains(k, seed=1)) for k in (0, 10, 40)])
    f = _features(HEFeatures(), rgb)
    for name in ("nuc_count_dens", "nuc_area_frac", "nuc_log_count", "H_mean"):
        col = f[:, NAMES.index(name)]
        assert col[0] < col[1] < col[2], name
    # Pink-only tissue: no nuclei found.
    assert f[0, NAMES.index("nuc_count_dens")] == 0.0


@pytest.mark.parametrize("od_scale", [0.75, 1.3])
def test_stain_shift_changes_features_less_than_handcrafted(od_scale: float) -> None:
    """Lighter or darker staining (optical density scaled) moves he-features less than
    handcrafted, relative to each model's spread between patches of different content."""
    concs = [_stains(k, seed=k) for k in (0, 5, 10, 20, 40, 60)]
    orig = np.stack([_rgb(c) for c in concs])
    shifted = np.stack([_rgb(c, od_scale) for c in concs])

    def relative_change(model: nn.Module) -> float:
        a, b = _features(model, orig), _features(model, shifted)
        spread = np.linalg.norm(a - a.mean(axis=0), axis=1).mean()
        return float(np.linalg.norm(b - a, axis=1).mean() / spread)

    he, hc = relative_change(HEFeatures()), relative_change(HandcraftedFeatures())
    assert he < 0.5 * hc, (he, hc)


def test_registry_lists_and_loads_he_features() -> None:
    names = {m.name: m for m in list_models()}
    info = names["he-features"]
    assert info.available and info.dim == DIM and info.input_size == 128
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)
    assert get_model_info("he-features").dim == DIM
    assert weights_id("he-features") == f"he-features:v{HEFeatures.VERSION}"
    loaded = load_model("he-features")
    assert isinstance(loaded.module, HEFeatures) and not loaded.module.training
    assert loaded.weights_hash == weights_id("he-features")


def test_embed_slide_with_he_features(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    path = embed_slide(small_slide.path, tmp_path, model="he-features", workers=0, batch_size=8)
    emb = read_embeddings(path)
    assert emb.n_patches > 0 and emb.dim == DIM
    assert emb.meta.model == "he-features"
    assert np.isfinite(emb.features).all()
    assert emb.features.std(axis=0).max() > 0  # not constant over patches
