"""The embedding pipeline with real PyTorch models on generated and real slides."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import SyntheticSlide

from histosic.config import Settings
from histosic.embed.builders.state import clean_state_dict
from histosic.embed.pipeline import embed_slide, embedding_filename
from histosic.embed.registry import get_model_info, list_models, load_model
from histosic.errors import (
    CancelledError,
    CorruptFileError,
    InvalidInputError,
    ModelUnavailableError,
    NoTissueError,
    OutputExistsError,
    UnknownModelError,
    UnknownResolutionError,
)
from histosic.slides import open_slide
from histosic.store import partial_path, read_embeddings
from histosic.tiling import TilingConfig

torch.set_num_threads(1)  # the test machine's cores are shared


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_embed_synthetic_slide_end_to_end(synthetic_slide: SyntheticSlide, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    path = embed_slide(
        synthetic_slide.path,
        tmp_path,
        model="resnet18-random",
        batch_size=16,
        workers=0,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert path.parent == tmp_path
    assert path.name == embedding_filename(synthetic_slide.path, "resnet18-random", TilingConfig())
    emb = read_embeddings(path)
    n = emb.n_patches
    assert 20 <= n <= 60 and emb.dim == 512
    assert np.isfinite(emb.features).all()
    # Coordinates: level-0, on the 256-px stride grid of a 40x slide, patches inside the slide.
    assert (emb.coords % 256 == 0).all()
    assert (emb.coords[:, 0] + 512 <= 3072).all() and (emb.coords[:, 1] + 512 <= 2048).all()
    assert emb.meta.patch_size_level0 == 512 and emb.meta.stride_level0 == 256
    assert emb.meta.mpp == pytest.approx(0.25) and emb.meta.model == "resnet18-random"
    assert emb.meta.extra["read_level"] == 1
    # Per-patch tissue fractions agree with the known mask; white fractions with the pixels.
    for (x, y), t, w in zip(emb.coords, emb.tissue_fraction, emb.white_fraction, strict=True):  # type: ignore[arg-type]
        true_t = synthetic_slide.mask[y : y + 512, x : x + 512].mean()
        assert abs(t - true_t) < 0.1
        assert abs(w - (1 - true_t)) < 0.1  # background here is glass, tissue is not white
    assert seen[0] == (0, n) and seen[-1] == (n, n)
    assert _leftovers(tmp_path) == [path.name]


def test_same_settings_are_skipped_and_deterministic(
    small_slide: SyntheticSlide, tmp_path: Path
) -> None:
    a = embed_slide(small_slide.path, tmp_path / "a", model="resnet18-random", workers=0)
    mtime = a.stat().st_mtime_ns
    again = embed_slide(small_slide.path, tmp_path / "a", model="resnet18-random", workers=0)
    assert again == a and a.stat().st_mtime_ns == mtime
    # A fresh run (via a DataLoader worker this time) gives the same features.
    b = embed_slide(
        small_slide.path, tmp_path / "b", model="resnet18-random", workers=1, batch_size=5
    )
    fa, fb = read_embeddings(a), read_embeddings(b)
    assert np.array_equal(fa.coords, fb.coords)
    np.testing.assert_allclose(fa.features, fb.features, rtol=1e-4, atol=1e-4)
    # overwrite re-embeds.
    embed_slide(
        small_slide.path, tmp_path / "a", model="resnet18-random", workers=0, overwrite=True
    )
    assert a.stat().st_mtime_ns != mtime


def test_output_of_another_slide_is_not_overwritten(
    small_slide: SyntheticSlide, synthetic_slide: SyntheticSlide, tmp_path: Path
) -> None:
    out = tmp_path / "one.h5"
    embed_slide(small_slide.path, out, model="handcrafted", workers=0)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        embed_slide(synthetic_slide.path, out, model="handcrafted", workers=0)
    assert read_embeddings(out).meta.slide_path == str(small_slide.path.resolve())


def test_handcrafted_features_separate_tissue_from_glass(
    synthetic_slide: SyntheticSlide, tmp_path: Path
) -> None:
    path = embed_slide(
        synthetic_slide.path,
        tmp_path,
        model="handcrafted",
        workers=0,
        tiling=TilingConfig(tissue_threshold=0.0),
    )
    emb = read_embeddings(path)
    assert emb.n_patches == 77 and emb.dim == get_model_info("handcrafted").dim
    assert np.isfinite(emb.features).all()
    tissue = emb.tissue_fraction > 0.9  # type: ignore[operator]
    glass = emb.tissue_fraction < 0.1  # type: ignore[operator]
    # Feature 6..9: saturation mean/std, value mean/std: tissue is more saturated than glass.
    assert emb.features[tissue, 6].min() > emb.features[glass, 6].max()


def test_cancel_removes_partial_file(synthetic_slide: SyntheticSlide, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(CancelledError, match="cancelled"):
        embed_slide(
            synthetic_slide.path,
            tmp_path,
            model="handcrafted",
            batch_size=4,
            workers=0,
            should_stop=stop,
        )
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_embed_from_a_worker_thread(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    # The server calls embed_slide from a thread; DataLoader workers then start by spawn.
    result: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.append(embed_slide(small_slide.path, tmp_path, model="handcrafted", workers=1))
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)
    assert not errors and result and result[0].exists()


@pytest.mark.slow
def test_real_svs(cmu_svs: Path, tmp_path: Path) -> None:
    path = embed_slide(cmu_svs, tmp_path, model="handcrafted", workers=0)
    emb = read_embeddings(path)
    assert emb.meta.mpp == pytest.approx(0.499) and emb.meta.patch_size_level0 == 257
    assert 80 < emb.n_patches < 300
    assert emb.tissue_fraction is not None
    assert bool(np.all(emb.tissue_fraction >= 0.5))


@pytest.mark.slow
def test_digestpath_jpeg(digestpath_jpg: Path, tmp_path: Path) -> None:
    cfg = TilingConfig(target_mpp=1.0)  # fewer, larger patches keep this quick
    with pytest.raises(UnknownResolutionError, match="--slide-mpp"):
        embed_slide(digestpath_jpg, tmp_path, model="handcrafted", tiling=cfg)
    path = embed_slide(
        digestpath_jpg, tmp_path, model="handcrafted", tiling=cfg, slide_mpp=0.5, workers=0
    )
    emb = read_embeddings(path)
    assert emb.meta.patch_size_level0 == 512 and emb.meta.extra["reader"] == "pil"
    assert emb.n_patches > 50


# --- bad input: clear error, nothing left behind -------------------------------------------


def test_missing_slide(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        embed_slide(tmp_path / "missing.svs", tmp_path / "out", model="handcrafted")
    assert _leftovers(tmp_path / "out") == []


def test_unknown_model(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"resnet19.*known models"):
        embed_slide(small_slide.path, tmp_path, model="resnet19")
    with pytest.raises(UnknownModelError, match="timm has no model"):
        embed_slide(small_slide.path, tmp_path, model="timm:not_a_model_xyz")
    assert _leftovers(tmp_path) == []


def test_no_tissue(slide_factory: object, tmp_path: Path) -> None:
    blank = slide_factory("blank.tiff", 1024, 1024, [])  # type: ignore[operator]
    with pytest.raises(NoTissueError, match="--tissue-threshold"):
        embed_slide(blank.path, tmp_path / "out", model="handcrafted")
    assert _leftovers(tmp_path / "out") == []


def test_corrupt_tiles(slide_factory: object, tmp_path: Path) -> None:
    import tifffile

    good = slide_factory("tocorrupt.tiff", 1024, 1536, [(0, 0, 1536, 1024)], compression="jpeg")  # type: ignore[operator]
    bad = tmp_path / "corrupt.tiff"
    data = bytearray(good.path.read_bytes())
    with tifffile.TiffFile(good.path) as tf:
        page = tf.pages[0]
        for off, n in list(zip(page.dataoffsets, page.databytecounts, strict=True))[5:12]:
            data[off : off + n] = bytes(n)  # zeroed JPEG tiles on level 0 only
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    for workers in (0, 1):
        with pytest.raises(CorruptFileError, match="corrupt tiles") as info:
            embed_slide(bad, out, model="handcrafted", workers=workers, batch_size=4)
        assert "Traceback" not in str(info.value)
        assert _leftovers(out) == []


# --- models -----------------------------------------------------------------------------------


def test_list_models() -> None:
    names = {m.name: m for m in list_models()}
    for name in ("resnet18", "resnet50", "resnet18-random", "histossl", "handcrafted"):
        assert name in names
    assert names["resnet18-random"].available and names["resnet18-random"].dim == 512
    assert names["resnet50"].dim == 2048 and names["handcrafted"].available


def test_random_resnet_is_reproducible() -> None:
    a = load_model("resnet18-random").module.state_dict()
    b = load_model("resnet18-random").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_offline_pretrained_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Callable[..., Settings]
) -> None:
    settings(offline=True, histossl_weights=None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache (torch reads it)
    for name in ("resnet18", "resnet50", "histossl"):
        assert not get_model_info(name).available
        with pytest.raises(ModelUnavailableError, match=r"handcrafted.*resnet18-random"):
            load_model(name)


def _tv_resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model: torch.nn.Module = torchvision.models.resnet18(weights=None)
    return model.eval()


def _same_features(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref = torch.nn.Sequential(*list(reference.children())[:-1], torch.nn.Flatten())
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x))


def test_histossl_checkpoint_layout(tmp_path: Path, settings: Callable[..., Settings]) -> None:
    # The release file: {'state_dict': {'model.resnet.<torchvision key>': ...}} with a SimCLR
    # projection head in fc.1 / fc.3. Weights made here (downloads are impossible in tests).
    ref = _tv_resnet18(3)
    state = {f"model.resnet.{k}": v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    state.update(
        {
            "model.resnet.fc.1.weight": torch.zeros(512, 512),
            "model.resnet.fc.1.bias": torch.zeros(512),
            "model.resnet.fc.3.weight": torch.zeros(128, 512),
            "model.resnet.fc.3.bias": torch.zeros(128),
        }
    )
    ckpt = tmp_path / "pytorchnative_tenpercent_resnet18.ckpt"
    torch.save({"state_dict": state, "epoch": 1000}, ckpt)
    settings(histossl_weights=ckpt)
    info = get_model_info("histossl")
    assert info.available and info.dim == 512
    loaded = load_model("histossl")
    _same_features(loaded.module, ref)
    _same_features(load_model(f"histossl:{ckpt}").module, ref)


def test_user_checkpoint(tmp_path: Path, small_slide: SyntheticSlide) -> None:
    ref = _tv_resnet18(5)
    path = tmp_path / "simclr.pt"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    name = f"checkpoint:{path}"
    assert get_model_info(name).dim == 512
    loaded = load_model(name)
    _same_features(loaded.module, ref)
    assert loaded.weights_hash.startswith("sha256:")
    out = embed_slide(small_slide.path, tmp_path / "emb", model=name, workers=0)
    assert read_embeddings(out).meta.weights_hash == loaded.weights_hash
    assert ".checkpoint-simclr-" in out.name


def test_checkpoint_must_be_plain_weights(tmp_path: Path) -> None:
    # A pickle with arbitrary objects is refused by weights_only=True.
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "obj": Path("x")}, path)
    with pytest.raises(CorruptFileError, match="weights_only"):
        load_model(f"checkpoint:{path}")
    junk = tmp_path / "junk.pt"
    torch.save({"conv.weight": torch.zeros(3)}, junk)
    with pytest.raises(CorruptFileError, match="ResNet"):
        load_model(f"checkpoint:{junk}")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(f"checkpoint:{tmp_path / 'none.pt'}")


def test_timm_model_architecture() -> None:
    info = get_model_info("timm:resnet18", check=False)
    assert info.dim == 512 and info.input_size == 224
    from histosic.embed.builders.timm import create

    model = create("resnet18", pretrained=False).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 512)


def test_clean_state_dict_strips_wrappers_and_heads() -> None:
    t = torch.zeros(1)
    out = clean_state_dict(
        {"state_dict": {"module.backbone.conv1.weight": t, "module.fc.weight": t}}
    )
    assert list(out) == ["conv1.weight"]


def test_embedding_filename_is_safe_and_deterministic() -> None:
    a = embedding_filename("/x/My Slide (1).svs", "checkpoint:/m/w ts.pt", TilingConfig())
    assert a == embedding_filename("/x/My Slide (1).svs", "checkpoint:/m/w ts.pt", TilingConfig())
    assert "/" not in a and " " not in a and a.endswith(".h5")
    assert a != embedding_filename(
        "/x/My Slide (1).svs", "checkpoint:/m/w ts.pt", TilingConfig(overlap=0)
    )
    assert embedding_filename("s.svs", "timm:vit_small", TilingConfig()).startswith(
        "s.timm-vit_small."
    )


def test_open_slide_object_is_accepted(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    with open_slide(small_slide.path) as s:
        path = embed_slide(s, tmp_path, model="handcrafted", workers=0)
    assert path.exists() and not partial_path(path).exists()
    assert os.access(path, os.R_OK)


def test_cuda_asked_for_without_cuda(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidInputError, match="--device cpu"):
        embed_slide(small_slide.path, tmp_path, model="handcrafted", device="cuda")
    with pytest.raises(InvalidInputError, match="unknown device"):
        embed_slide(small_slide.path, tmp_path, model="handcrafted", device="tpu9")
    assert _leftovers(tmp_path) == []


@pytest.mark.gpu
def test_cuda_matches_cpu(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cpu = embed_slide(small_slide.path, tmp_path / "cpu", model="resnet18-random", device="cpu")
    gpu = embed_slide(small_slide.path, tmp_path / "gpu", model="resnet18-random", device="cuda")
    a, b = read_embeddings(cpu), read_embeddings(gpu)
    assert np.array_equal(a.coords, b.coords)
    # bf16/fp16 autocast on the GPU: close, not equal.
    cos = (a.features * b.features).sum(1) / (
        np.linalg.norm(a.features, axis=1) * np.linalg.norm(b.features, axis=1)
    )
    assert cos.min() > 0.99


def test_timm_offline_uses_the_hub_cache_or_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Callable[..., Settings]
) -> None:
    import huggingface_hub.constants as hf_constants
    import timm
    from safetensors.torch import save_file

    settings(offline=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not get_model_info("timm:resnet18").available
    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache"):
        load_model("timm:resnet18")
    # A cache laid out as huggingface_hub writes it, holding weights made here.
    torch.manual_seed(7)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    cfg = timm.models.get_pretrained_cfg("resnet18")
    assert cfg is not None and cfg.hf_hub_id
    hub_id = str(cfg.hf_hub_id)
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, str(snap / "model.safetensors")
    )
    assert get_model_info("timm:resnet18").available
    loaded = load_model("timm:resnet18")
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), ref(x))


def test_unreadable_output_is_replaced(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    target = tmp_path / embedding_filename(small_slide.path, "handcrafted", TilingConfig())
    target.write_bytes(b"half a file")
    path = embed_slide(small_slide.path, tmp_path, model="handcrafted", workers=0)
    assert path == target and read_embeddings(path).n_patches > 0


def test_readers_leave_the_resize_to_the_gpu() -> None:
    # On CUDA the reader processes (the limit there) skip the PIL resize and the GPU does it,
    # unless reading at the tiling size would more than double the bytes to move.
    from histosic.embed.pipeline import _read_size
    from histosic.embed.registry import ModelInfo

    def info(size: int, crop_from: int = 0) -> ModelInfo:
        return ModelInfo("m", 8, size, (0, 0, 0), (1, 1, 1), "", crop_from=crop_from)

    assert _read_size(256, info(224), torch.device("cpu")) == 224
    assert _read_size(256, info(224), torch.device("cuda")) == 256
    assert _read_size(256, info(128), torch.device("cuda")) == 256
    assert _read_size(512, info(224), torch.device("cuda")) == 224
    # resize-then-crop models (GigaPath) are read at the resize side, not the crop
    assert _read_size(512, info(224, crop_from=256), torch.device("cpu")) == 256


def test_batch_size_is_halved_until_a_forward_pass_fits() -> None:
    # A test double for the GPU (not to be had here): a forward pass that runs out of device
    # memory above 12 patches, as CUDA does (torch.OutOfMemoryError).
    from histosic.embed.pipeline import fit_batch_size

    tried: list[int] = []

    def forward(b: int) -> None:
        tried.append(b)
        if b > 12:
            raise torch.OutOfMemoryError("CUDA out of memory (test double)")

    assert fit_batch_size(forward, 64) == 8 and tried == [64, 32, 16, 8]
    assert fit_batch_size(forward, 12) == 12

    def never(b: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (test double)")

    with pytest.raises(torch.OutOfMemoryError):
        fit_batch_size(never, 4)


def test_the_batch_probe_runs_the_real_preprocessing_and_model() -> None:
    from histosic.embed.pipeline import _Preprocess, _probe
    from histosic.embed.registry import load_model

    loaded = load_model("resnet18-random")
    seen: list[tuple[int, ...]] = []
    loaded.module.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    cpu = torch.device("cpu")
    _probe(loaded.module, _Preprocess(loaded, cpu), 256, "auto", cpu)(3)
    assert seen == [(3, 3, 224, 224)]


@pytest.mark.parametrize("batch", [1, 3, 8, 64, 100])
@pytest.mark.parametrize("n", [0, 1, 7, 200, 1000])
def test_batch_bounds_ramp_up_and_cover_every_row_once(n: int, batch: int) -> None:
    from histosic.embed.reading import batch_bounds

    bounds = batch_bounds(0, n, batch)
    rows = [r for lo, hi in bounds for r in range(lo, hi)]
    assert rows == list(range(n))
    sizes = [hi - lo for lo, hi in bounds]
    assert all(0 < s <= batch for s in sizes)
    assert sizes[:-1] == sorted(sizes[:-1])  # grow, then full batches (the last may be short)
    if batch == 64 and n == 1000:
        assert sizes[:5] == [8, 16, 32, 64, 64]
    # A run resumed at any batch boundary cuts the rest exactly as an uninterrupted run does
    # (the same batches, so the same features); one resumed elsewhere snaps back to them.
    for k, (lo, _) in enumerate(bounds):
        assert batch_bounds(lo, n, batch) == bounds[k:]
    if n > 10:
        resumed = batch_bounds(5, n, batch)
        assert resumed[0][0] == 5 and resumed[1:] == [b for b in bounds if b[0] >= resumed[0][1]]


@pytest.mark.parametrize("workers", [0, 1])
def test_the_pipeline_embeds_in_the_ramped_batches(
    small_slide: SyntheticSlide, tmp_path: Path, workers: int
) -> None:
    from histosic.embed.reading import batch_bounds

    done: list[int] = []
    path = embed_slide(
        small_slide.path, tmp_path, model="handcrafted", batch_size=4, workers=workers,
        progress=lambda d, t: done.append(d),
    )  # fmt: skip
    n = read_embeddings(path).n_patches
    assert n > 4  # enough patches for the ramp (1, 2, 4) to reach the full batch
    assert done == [0] + [hi for _, hi in batch_bounds(0, n, 4)]
