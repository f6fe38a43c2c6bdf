"""Seed points -> patch indices (histosic.seeds)."""

from __future__ import annotations

import numpy as np
import pytest
from test_qupath_data import PATCH, STRIDE, make_embeddings, seeds_from_truth

from histosic.errors import InvalidInputError
from histosic.seeds import SeedPoint, map_seeds
from histosic.store import Embeddings


@pytest.fixture(scope="module")
def grid() -> tuple[Embeddings, np.ndarray]:
    return make_embeddings(nx=20, ny=15)


def _pts(xy: np.ndarray, name: str) -> list[SeedPoint]:
    return [SeedPoint(float(x), float(y), name) for x, y in xy]


def test_point_maps_to_patch_whose_central_cell_contains_it(
    grid: tuple[Embeddings, np.ndarray],
) -> None:
    emb, truth = grid
    clicks = seeds_from_truth(emb, truth, 5)
    points = _pts(clicks["Tumor"], "Tumor") + _pts(clicks["Stroma"], "Stroma")
    m = map_seeds(emb, points)
    assert m.n_used == 10 and m.n_ignored == 0
    centres = emb.centers()
    for p, i in zip(m.used, m.patch_index.tolist(), strict=True):
        # With 50 % overlap the nearest centre is the one whose central cell holds the point.
        d = np.abs(centres[i] - (p.x, p.y))
        assert d.max() <= STRIDE / 2
        nearest = int(np.argmin(np.hypot(*(centres - (p.x, p.y)).T)))
        assert i == nearest
    # Binary: negative = 0, positive = 1, named after the seed classes.
    assert m.class_names == ("Stroma", "Tumor") and m.positive == 1
    assert set(m.seeds[m.patch_index[:5]].tolist()) == {1}
    assert set(m.seeds[m.patch_index[5:]].tolist()) == {0}
    assert int((m.seeds >= 0).sum()) == 10
    assert m.seeded_patches_per_class() == {"Stroma": 5, "Tumor": 5}


def test_off_tissue_and_outside_points_are_ignored_with_reasons(
    grid: tuple[Embeddings, np.ndarray],
) -> None:
    emb, truth = grid
    clicks = seeds_from_truth(emb, truth, 3)
    inside_hole = SeedPoint(64 + STRIDE, 32 + STRIDE, "Stroma")  # in the block with no patches
    outside = SeedPoint(emb.meta.level0_width + 10.0, 5.0, "Tumor")
    negative = SeedPoint(-1.0, 100.0, "Tumor")
    unclassified = SeedPoint(float(clicks["Tumor"][0, 0]), float(clicks["Tumor"][0, 1]), "")
    nan = SeedPoint(float("nan"), 3.0, "Tumor")
    points = [
        *_pts(clicks["Tumor"], "Tumor"),
        *_pts(clicks["Stroma"], "Stroma"),
        inside_hole,
        outside,
        negative,
        unclassified,
        nan,
    ]
    m = map_seeds(emb, points)
    assert m.n_used == 6
    reasons = {i.point: i.reason for i in m.ignored}
    assert reasons[inside_hole].startswith("off tissue")
    assert "px away" in reasons[inside_hole]
    assert reasons[outside].startswith("outside the slide")
    assert reasons[negative].startswith("outside the slide")
    assert reasons[unclassified].startswith("no classification")
    assert reasons[nan].startswith("invalid coordinates")
    assert m.ignored_reasons() == {
        "off tissue": 1,
        "outside the slide": 2,
        "no classification": 1,
        "invalid coordinates": 1,
    }
    text = m.summary()
    assert "6 used" in text and "5 ignored" in text and "off tissue" in text


def test_point_in_patch_margin_but_no_containing_patch_is_off_tissue() -> None:
    emb, _ = make_embeddings(nx=3, ny=3, hole=False)
    # Just beyond the right edge of the last column of patches, but inside the slide.
    x = float(emb.coords[:, 0].max() + PATCH + 5)
    m_pts = [SeedPoint(x, 100.0, "Tumor"), SeedPoint(200.0, 200.0, "Tumor")]
    m_pts.append(SeedPoint(float(emb.centers()[-1, 0]), float(emb.centers()[-1, 1]), "Stroma"))
    m = map_seeds(emb, m_pts)
    assert [i.point.x for i in m.ignored] == [x]


def test_point_on_patch_edge_uses_patch_that_contains_it() -> None:
    emb, _ = make_embeddings(nx=4, ny=4, hole=False)
    c = emb.centers()
    # A point in the outer quarter of a corner patch: contained only by that patch.
    corner = SeedPoint(float(c[0, 0] - PATCH / 2 + 1), float(c[0, 1] - PATCH / 2 + 1), "Tumor")
    other = SeedPoint(float(c[-1, 0]), float(c[-1, 1]), "Stroma")
    m = map_seeds(emb, [corner, other])
    assert m.patch_index.tolist() == [0, emb.n_patches - 1]


def test_negative_classes_merge_in_binary_and_stay_apart_in_multiclass(
    grid: tuple[Embeddings, np.ndarray],
) -> None:
    emb, truth = grid
    c = seeds_from_truth(emb, truth, 6)
    neg = c["Stroma"]
    points = [
        *_pts(c["Tumor"], "Tumor"),
        *_pts(neg[:3], "Stroma"),
        *_pts(neg[3:], "Immune cells"),
    ]
    binary = map_seeds(emb, points)
    assert binary.class_names == ("Other", "Tumor") and binary.positive == 1
    assert binary.seed_class_names == {"Immune cells": "Other", "Stroma": "Other", "Tumor": "Tumor"}
    assert binary.seeded_patches_per_class() == {"Other": 6, "Tumor": 6}
    assert "class 'Other' = seed classes Immune cells, Stroma" in binary.summary()
    multi = map_seeds(emb, points, multiclass=True)
    assert multi.class_names == ("Immune cells", "Stroma", "Tumor") and multi.positive is None
    assert multi.seeded_patches_per_class() == {"Immune cells": 3, "Stroma": 3, "Tumor": 6}


def test_positive_class_matches_case_insensitively_and_is_configurable(
    grid: tuple[Embeddings, np.ndarray],
) -> None:
    emb, truth = grid
    c = seeds_from_truth(emb, truth, 2, positive="tumor", negative="Stroma")
    points = _pts(c["tumor"], "tumor") + _pts(c["Stroma"], "Stroma")
    assert map_seeds(emb, points).class_names == ("Stroma", "tumor")
    swapped = map_seeds(emb, points, positive="Stroma")
    assert swapped.class_names == ("tumor", "Stroma") and swapped.positive == 1
    assert swapped.seeds[swapped.patch_index[-1]] == 1


def test_conflicting_classes_on_one_patch_are_ignored(
    grid: tuple[Embeddings, np.ndarray],
) -> None:
    emb, truth = grid
    c = seeds_from_truth(emb, truth, 3)
    x, y = (float(v) for v in emb.centers()[np.flatnonzero(truth)[0]])
    points = [
        *_pts(c["Tumor"], "Tumor"),
        *_pts(c["Stroma"], "Stroma"),
        SeedPoint(x, y, "Tumor"),
        SeedPoint(x + 1, y + 1, "Stroma"),
    ]
    m = map_seeds(emb, points)
    conflict = [i for i in m.ignored if i.reason.startswith("conflicting classes")]
    assert len(conflict) == 2 and m.n_used == 6


def test_positive_class_missing_is_a_precise_error(grid: tuple[Embeddings, np.ndarray]) -> None:
    emb, truth = grid
    c = seeds_from_truth(emb, truth, 2, positive="Lesion", negative="Normal")
    points = _pts(c["Lesion"], "Lesion") + _pts(c["Normal"], "Normal")
    with pytest.raises(InvalidInputError, match=r"positive class 'Tumor'.*--positive"):
        map_seeds(emb, points)
    assert map_seeds(emb, points, positive="Lesion").class_names == ("Normal", "Lesion")


def test_only_one_class_is_an_error(grid: tuple[Embeddings, np.ndarray]) -> None:
    emb, truth = grid
    c = seeds_from_truth(emb, truth, 4)
    with pytest.raises(InvalidInputError, match="at least one other class"):
        map_seeds(emb, _pts(c["Tumor"], "Tumor"))
    with pytest.raises(InvalidInputError, match="two classes"):
        map_seeds(emb, _pts(c["Tumor"], "Tumor"), multiclass=True)


def test_all_seeds_off_tissue_is_an_error(grid: tuple[Embeddings, np.ndarray]) -> None:
    emb, _ = grid
    points = [SeedPoint(64 + STRIDE, 32 + STRIDE, "Tumor"), SeedPoint(-5, -5, "Stroma")]
    with pytest.raises(InvalidInputError, match=r"none of the 2 seed points.*off tissue: 1"):
        map_seeds(emb, points)


def test_large_slide_maps_correctly() -> None:
    # 100k patches: the KD-tree mapping must stay exact on a slide of realistic size.
    emb, truth = make_embeddings(nx=400, ny=250, dim=2, hole=False)
    assert emb.n_patches == 100_000
    rng = np.random.default_rng(3)
    idx = rng.choice(emb.n_patches, 500, replace=False)
    centres = emb.centers()
    names = np.where(truth[idx], "Tumor", "Stroma")
    points = [
        SeedPoint(float(x), float(y), str(n))
        for (x, y), n in zip(centres[idx] + 0.4 * STRIDE, names, strict=True)
    ]
    m = map_seeds(emb, points)
    assert m.n_used == 500
    assert np.array_equal(m.patch_index, idx)


def test_ignored_seeds_carry_the_point_index_even_for_identical_points(
    grid: tuple[Embeddings, np.ndarray],
) -> None:
    # Identical points are equal values: only their position in the input tells them apart, so
    # the mapping records it (the server echoes each ignored seed's request index and id).
    emb, truth = grid
    clicks = seeds_from_truth(emb, truth, 2)
    outside = SeedPoint(-5.0, 7.0, "Tumor")
    tumour = _pts(clicks["Tumor"], "Tumor")
    stroma = _pts(clicks["Stroma"], "Stroma")
    conflict = SeedPoint(tumour[0].x, tumour[0].y, "Stroma")  # same patch, other class
    points = [outside, *tumour, SeedPoint(-5.0, 7.0, "Tumor"), *stroma, tumour[0], conflict]
    m = map_seeds(emb, points)
    by_index = {i.index: i for i in m.ignored}
    assert sorted(by_index) == [0, 1, 3, 6, 7]
    assert all(points[i.index] == i.point for i in m.ignored)
    assert by_index[0].reason.startswith("outside the slide")
    assert by_index[3].reason.startswith("outside the slide")
    # tumour[0] and its identical copy at 6 both sit on the patch that `conflict` also seeds
    assert {by_index[j].reason.split(":")[0] for j in (1, 6, 7)} == {"conflicting classes"}
    assert m.n_used == len(points) - 5


@pytest.mark.parametrize("layout", ["grid-50%-overlap", "grid-no-overlap", "scattered"])
def test_containing_patches_is_the_nearest_containing_centre(layout: str) -> None:
    """Against brute force over every patch: the nearest centre within half a side on both
    axes, ties to the lower index, -1 where none; points on patch edges and exact ties."""
    from histosic.seeds import containing_patches

    rng = np.random.default_rng(0)
    side = 256.0
    if layout == "scattered":
        centres = rng.uniform(0, 5000, size=(700, 2))
    else:
        stride = side / 2 if layout == "grid-50%-overlap" else side
        gx, gy = np.meshgrid(np.arange(30), np.arange(20))
        keep = rng.random(gx.size) < 0.7  # holes, as tissue leaves them
        grid = np.stack([gx.ravel(), gy.ravel()], 1)[keep].astype(np.float64)
        centres = grid * stride + side / 2 + 17.0
    points = np.concatenate(
        [
            rng.uniform(-300, 5300, size=(2000, 2)),
            centres[:50] + side / 2,  # on a patch corner: exactly on its edge
            centres[50:100] + [side / 4, 0.0],  # between neighbours: exact ties
            centres[100:150].round(),
        ]
    )
    got = containing_patches(centres, points, side / 2)
    delta = np.abs(centres[None, :, :] - points[:, None, :])
    inside = (delta <= side / 2 + 1e-9).all(axis=2)
    dist = np.where(inside, np.hypot(delta[..., 0], delta[..., 1]), np.inf)
    want = np.where(inside.any(axis=1), np.argmin(dist, axis=1), -1)  # argmin: lowest on ties
    assert (got == want).all()
    assert (want >= 0).sum() > 500 and (want < 0).sum() > 100  # both kinds are exercised


def test_nearest_distances_agree_with_a_tree_when_many_points_are_off_tissue() -> None:
    """Many off-tissue points against many patches take scipy's tree; the distances are the
    brute-force ones either way."""
    from histosic.seeds import _nearest_distances

    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 60000, size=(60000, 2))
    points = rng.uniform(-500, 60500, size=(900, 2))  # 54 million pairs: the tree's side
    got = _nearest_distances(centres, points)
    sample = points[:40]
    want = np.sqrt(((centres[None, :, :] - sample[:, None, :]) ** 2).sum(2)).min(1)
    np.testing.assert_allclose(got[:40], want, rtol=1e-12)
    np.testing.assert_allclose(_nearest_distances(centres, sample), want, rtol=1e-12)  # loop side
