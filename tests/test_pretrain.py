"""SimCLR pretraining (``histosic pretrain``): augmentations, loss, checkpoint, CLI, bad input.

Real PyTorch training runs here on the CPU with tiny settings (a few steps of ResNet-18 on small
inputs); the GPU test runs only where CUDA is present.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from conftest import SyntheticSlide, write_pyramid

from histosic.cli import main
from histosic.embed.pipeline import embed_slide
from histosic.embed.pretrain import (
    CHECKPOINT_FORMAT,
    PretrainConfig,
    augment_views,
    collect_regions,
    nt_xent_loss,
    pretrain_simclr,
)
from histosic.embed.registry import get_model_info, load_model
from histosic.errors import (
    CorruptFileError,
    InvalidInputError,
    NoTissueError,
    OutputExistsError,
)
from histosic.store import read_embeddings

TINY = PretrainConfig(
    region_size=64, input_size=32, steps=3, batch_size=4, target_mpp=1.0, max_regions=50
)


def _regions(n: int = 6, side: int = 48, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8))


def test_augment_views_shape_range_and_seed() -> None:
    data = _regions()
    cfg = PretrainConfig(region_size=48, input_size=32)
    idx = torch.tensor([0, 1, 2, 5, 5])
    g1, g2 = torch.Generator(), torch.Generator()
    g1.manual_seed(3)
    g2.manual_seed(3)
    a = augment_views(data, idx, cfg, g1)
    b = augment_views(data, idx, cfg, g2)
    assert a.shape == (5, 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # same generator state, same views
    c = augment_views(data, idx, cfg, g1)
    assert not torch.allclose(a, c)  # the next call draws new views
    # Two views of the same region differ (index 5 twice in one batch).
    assert not torch.allclose(a[3], a[4])


def test_augment_without_jitter_keeps_a_full_crop_close_to_the_region() -> None:
    # min_scale=1 and no stain jitter: the crop is the whole region up to flips/turns, colour
    # jitter and blur, so the mean colour stays near the region's.
    data = torch.full((2, 3, 40, 40), 200, dtype=torch.uint8)
    data[:, 0] = 100
    cfg = PretrainConfig(region_size=40, input_size=40, min_scale=1.0, stain_jitter=0.0)
    g = torch.Generator()
    g.manual_seed(0)
    v = augment_views(data, torch.tensor([0, 1]), cfg, g)
    means = v.mean(dim=(0, 2, 3))
    # Red stays the darkest channel unless the view was made grey (then all are equal).
    assert float(means[0]) <= float(means[1]) + 1e-6


def test_nt_xent_loss_by_hand() -> None:
    # Two pairs of identical, orthogonal unit vectors: for each of the 4 views the positive has
    # similarity 1/T and the two others 0, so the loss is -log(e^(1/T) / (e^(1/T) + 2)).
    t = 0.5
    z = torch.eye(2, 4)
    loss = float(nt_xent_loss(z, z.clone(), t))
    assert loss == pytest.approx(-math.log(math.exp(1 / t) / (math.exp(1 / t) + 2)), rel=1e-6)
    # Swapped partners are worse than matched ones.
    assert float(nt_xent_loss(z, z.flip(0), t)) > loss


def test_config_rejects_impossible_settings() -> None:
    bad = [
        ({"arch": "vgg16"}, "arch"),
        ({"input_size": 256, "region_size": 128}, "region size"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 1}, "batch size"),
        ({"lr": 0.0}, "lr"),
        ({"temperature": float("nan")}, "temperature"),
        ({"min_scale": 0.0}, "min scale"),
        ({"stain_jitter": 1.5}, "stain jitter"),
        ({"time_limit": -1.0}, "time limit"),
        ({"target_mpp": 0.0}, "mpp"),
    ]
    for kwargs, match in bad:
        with pytest.raises(InvalidInputError, match=match):
            PretrainConfig(**kwargs).validate()  # type: ignore[arg-type]


def test_pretrain_checkpoint_embeds_with_its_own_input_size(
    small_slide: SyntheticSlide, tmp_path: Path
) -> None:
    out = tmp_path / "ssl.pt"
    steps: list[tuple[int, int, float]] = []
    res = pretrain_simclr(
        [small_slide.path],
        out,
        TINY,
        device="cpu",
        progress=lambda s, t, loss: steps.append((s, t, loss)),
    )
    assert res.steps == 3 and res.n_regions >= 2 and out.is_file()
    assert steps and steps[-1][0] == 3 and all(math.isfinite(v) for _, _, v in steps)
    assert [p.name for p in tmp_path.iterdir()] == ["ssl.pt"]  # no temporary file left
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["histosic"]["format"] == CHECKPOINT_FORMAT
    assert saved["histosic"]["input_size"] == 32 and saved["histosic"]["steps"] == 3
    assert not any(k.startswith(("projector", "fc.")) for k in saved["state_dict"])

    name = f"checkpoint:{out}"
    info = get_model_info(name)
    assert info.dim == 512 and info.input_size == 32 and "SimCLR" in info.description
    loaded = load_model(name)
    # The weights are the trained ones, not a fresh network's.
    state = loaded.module.state_dict()
    assert torch.equal(state["conv1.weight"], saved["state_dict"]["conv1.weight"])
    emb = embed_slide(small_slide.path, tmp_path / "emb", model=name, workers=0)
    feats = read_embeddings(emb).features
    assert feats.shape[1] == 512 and np.isfinite(feats).all() and feats.std(axis=0).max() > 0


def test_cli_pretrain_and_its_errors(
    small_slide: SyntheticSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.pt"
    args = [
        "pretrain",
        str(small_slide.path),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "3",
        "--region-size",
        "64",
        "--input-size",
        "32",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "checkpoint:" in capsys.readouterr().out
    before = out.read_bytes()
    # The checkpoint exists: refused, and the file is left as it was.
    assert main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    # A setting that cannot work.
    assert main([*args[:-4], "--input-size", "128", "--device", "cpu", "--overwrite"]) == 1
    assert "region size" in capsys.readouterr().err
    assert out.read_bytes() == before
    # A slide that is not there.
    assert main(["pretrain", str(tmp_path / "none.tiff"), "--out", str(tmp_path / "x.pt")]) == 1
    assert "none.tiff" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_no_tissue_and_bad_output(
    slide_factory: Callable[..., SyntheticSlide], tmp_path: Path
) -> None:
    blank = slide_factory("blank.tiff", 512, 512, [])
    with pytest.raises(NoTissueError, match="none of the 1 slides"):
        collect_regions([blank.path], TINY)
    with pytest.raises(InvalidInputError, match="no slides"):
        collect_regions([], TINY)
    regions = np.zeros((4, 3, 64, 64), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match="does not exist"):
        pretrain_simclr([], tmp_path / "missing" / "m.pt", TINY, device="cpu", regions=regions)
    existing = tmp_path / "m.pt"
    existing.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        pretrain_simclr([], existing, TINY, device="cpu", regions=regions)
    assert existing.read_bytes() == b"keep"
    bads: list[Any] = [regions[:, :1], regions.astype(np.float32), regions[:1]]
    for bad in bads:
        with pytest.raises(InvalidInputError, match="regions must be"):
            pretrain_simclr([], tmp_path / "r.pt", TINY, device="cpu", regions=bad)
    assert not (tmp_path / "r.pt").exists()


def test_mixed_resolution_images_give_regions_at_one_resolution(tmp_path: Path) -> None:
    # The same tissue as a 0.5 um/px and a 1.0 um/px plain image: both give regions of the
    # configured pixel size at the target resolution, and about 4x fewer at the coarser one.
    from conftest import tissue_image

    img, _ = tissue_image(512, 512, [(40, 40, 440, 440)], seed=2)
    fine = write_pyramid(tmp_path / "fine.tiff", [img], 0.5)
    small = img[::2, ::2].copy()
    coarse = tmp_path / "coarse.tiff"
    tifffile.imwrite(coarse, small, photometric="rgb")
    r_fine = collect_regions([fine], TINY)
    r_coarse = collect_regions([coarse], TINY, slide_mpp=1.0)
    assert r_fine.shape[1:] == r_coarse.shape[1:] == (3, 64, 64)
    assert r_fine.shape[0] == r_coarse.shape[0]


def test_checkpoint_with_a_broken_histosic_entry(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": net.state_dict(), "histosic": {"input_size": "big"}}, path)
    with pytest.raises(CorruptFileError, match="input_size"):
        get_model_info(f"checkpoint:{path}")


@pytest.mark.gpu
def test_pretrain_on_cuda(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    res = pretrain_simclr([small_slide.path], tmp_path / "gpu.pt", TINY, device="cuda")
    assert res.steps == 3 and all(math.isfinite(v) for v in res.losses)
    assert get_model_info(f"checkpoint:{tmp_path / 'gpu.pt'}").input_size == 32


def test_max_regions_reads_a_random_subset_of_the_same_regions(
    slide_factory: Callable[..., SyntheticSlide],
) -> None:
    a = slide_factory("two-a.tiff", 768, 768, [(40, 40, 680, 680)], seed=3)
    b = slide_factory("two-b.tiff", 768, 768, [(40, 40, 400, 680)], seed=4)
    full = collect_regions([a.path, b.path], TINY)
    cfg = PretrainConfig(**{**TINY.__dict__, "max_regions": 5})
    few = collect_regions([a.path, b.path], cfg)
    assert few.shape == (5, *full.shape[1:])
    assert np.array_equal(few, collect_regions([a.path, b.path], cfg))  # same seed, same pick
    flat = full.reshape(full.shape[0], -1)
    for region in few.reshape(5, -1):
        assert (flat == region).all(axis=1).any()  # each is one of the regions, read as is
