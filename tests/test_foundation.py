"""Pathology foundation models, run as their authors run them, without the hub.

Pretrained weights cannot be downloaded here, so each test builds the model's exact architecture
the way its card (and Trident's ``load.py``) builds it, with random weights, writes them where the
hub client would (``models--org--name/snapshots/<rev>/``, ``refs/main``), embeds patches of a real
image through ``histosic embed`` in a subprocess with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` on
that cache, and compares with the model called directly here with the authors' preprocessing
(torchvision transforms) and pooling on the same pixels: cosine similarity >= 0.9999 per patch.

The ViT-H and ViT-g models (UNI2-h, Virchow, Virchow2, H-optimus-0/1, GigaPath: 0.6 to 1.1 billion
parameters, 2.5 to 4.5 GB of fp32 weights, written and read again) are checked by configuration
only: built on the ``meta`` device both ways, the same tensor names and shapes, the published
parameter count, and the embedding dimension from a meta forward pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from histosic.embed.foundation import FOUNDATION, Foundation, by_name

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")
from safetensors.torch import save_file  # noqa: E402
from timm.layers import SwiGLUPacked  # type: ignore[attr-defined]  # noqa: E402
from torchvision import transforms as T  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
KAIKO = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
GIANT = {"uni2-h", "virchow", "virchow2", "h-optimus-0", "h-optimus-1", "gigapath"}
LARGE = {"uni", "phikon-v2", "hibou-l", "kaiko-vitl14", "conch-v1.5"}


@dataclass(frozen=True)
class Reference:
    """The authors' way: the network, the transform of a PIL patch, the pooling of its output."""

    build: Callable[[], nn.Module]
    transform: Callable[[Image.Image], torch.Tensor]
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _tf(norm: tuple[Any, Any], size: int = 224, crop: int = 0) -> Any:
    steps: list[Any] = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)]
    if crop:
        steps.append(T.CenterCrop(crop))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(*norm)])


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y: torch.Tensor = model(x)
    return y


def _cls_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # Virchow's card
    tokens = model(x)
    return torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens :].mean(1)], dim=-1)


def _hf_cls(model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # Phikon's card
    out: torch.Tensor = model(pixel_values=x).last_hidden_state[:, 0, :]
    return out


def _hf_pooler(model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # Hibou's card
    out: torch.Tensor = model(pixel_values=x).pooler_output
    return out


class _TransPathStem(nn.Module):
    """CTransPath's convolutional stem as TransPath's ``ctran.py`` builds it (in a loop)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Any = None,
        flatten: bool = True,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        stem: list[nn.Module] = []
        cin, cout = 3, embed_dim // 8
        for _ in range(2):
            stem += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin, cout = cout, cout * 2
        stem.append(nn.Conv2d(cin, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*stem)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2) if self.flatten else x
        out: torch.Tensor = self.norm(x)
        return out


def _ctranspath() -> nn.Module:  # Trident's CTransPathInferenceEncoder and CHIEF's example
    timm_ctp = pytest.importorskip("timm_ctp")
    with torch.device("cpu"):  # timm_ctp's constructor calls .item(): not on the meta device
        model: nn.Module = timm_ctp.create_model(
            "swin_tiny_patch4_window7_224",
            embed_layer=_TransPathStem,
            pretrained=False,
            img_size=224,
        )
    model.head = nn.Identity()
    return model.to(torch.empty(0).device)


class _TridentPooler(nn.Module):
    """CONCH v1.5's AttentionalPooler as Trident's vendored tower computes it (einsum form)."""

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, d_model))
        self.heads, self.scale = n_head, (d_model // n_head) ** -0.5
        self.ln_k, self.ln_q = nn.LayerNorm(context_dim), nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        x = self.ln_k(x[:, None])  # b 1 n d
        q = self.ln_q(self.query[None, None].expand(b, 1, -1, -1))  # b 1 1 d
        q = self.to_q(q)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(*t.shape[:3], h, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))
        sim = torch.einsum("...id,...jd->...ij", q * self.scale, k)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        out = torch.einsum("...ij,...jd->...id", attn, v)  # b h 1 1 d
        out = out.permute(0, 2, 3, 1, 4).reshape(b, 1, 1, -1)
        return self.to_out(out).squeeze(1)  # type: ignore[no-any-return]


class _TridentConch(nn.Module):
    """Trident's CONCHVisionTower: trunk.forward_features, the pooler's first query, ln."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk: Any = timm.create_model(
            "vit_large_patch16_224", img_size=224, init_values=1.0, num_classes=0
        )
        self.attn_pool_contrast = _TridentPooler()
        self.ln_contrast = nn.LayerNorm(768)

    def _interpolate(self, w: int, h: int) -> torch.Tensor:  # DINO's interpolate_pos_encoding
        pos = self.trunk.pos_embed
        n = pos.shape[1] - 1
        w0, h0 = w // 16 + 0.1, h // 16 + 0.1
        side = int(n**0.5)
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).view(1, -1, pos.shape[-1])], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        _, _, w, h = x.shape
        y = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        y = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), y], dim=1)
        y = t.norm(t.blocks(t.norm_pre(y + self._interpolate(w, h))))
        return self.ln_contrast(self.attn_pool_contrast(y)[:, 0])  # type: ignore[no-any-return]


def _swiglu() -> dict[str, Any]:
    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


def _kaiko(arch: str, img: int = 224) -> Reference:
    return Reference(
        lambda: timm.create_model(arch, num_classes=0, img_size=img, dynamic_img_size=True),
        _tf(KAIKO, 224, 224),
        _out,
    )


REFERENCES: dict[str, Reference] = {
    "uni": Reference(
        lambda: timm.create_model(
            "vit_large_patch16_224",
            img_size=224,
            patch_size=16,
            init_values=1e-5,
            num_classes=0,
            dynamic_img_size=True,
        ),
        _tf(IMAGENET, 224, 224),
        _out,
    ),
    "uni2-h": Reference(
        lambda: timm.create_model(
            "vit_giant_patch14_224",
            pretrained=False,
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            num_classes=0,
            no_embed_class=True,
            reg_tokens=8,
            dynamic_img_size=True,
            **_swiglu(),
        ),
        _tf(IMAGENET, 224, 224),
        _out,
    ),
    "virchow": Reference(
        lambda: timm.create_model(
            "vit_huge_patch14_224",
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            mlp_ratio=5.3375,
            global_pool="",
            dynamic_img_size=True,
            **_swiglu(),
        ),
        _tf(IMAGENET),
        _cls_mean,
    ),
    "virchow2": Reference(
        lambda: timm.create_model(
            "vit_huge_patch14_224",
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            reg_tokens=4,
            mlp_ratio=5.3375,
            global_pool="",
            dynamic_img_size=True,
            **_swiglu(),
        ),
        _tf(IMAGENET),
        _cls_mean,
    ),
    **{
        name: Reference(
            lambda: timm.create_model(
                "vit_giant_patch14_reg4_dinov2",
                num_classes=0,
                img_size=224,
                global_pool="token",
                init_values=1e-5,
                dynamic_img_size=True,
            ),
            _tf(BIOPTIMUS),
            _out,
        )
        for name in ("h-optimus-0", "h-optimus-1")
    },
    "h0-mini": Reference(
        lambda: timm.create_model(
            "vit_base_patch14_reg4_dinov2",
            num_classes=0,
            img_size=224,
            init_values=1e-5,
            dynamic_img_size=True,
            **_swiglu(),
        ),
        _tf(BIOPTIMUS, 224, 224),
        _out,
    ),
    "gigapath": Reference(
        lambda: timm.create_model(
            "vit_giant_patch14_dinov2",
            pretrained=False,
            img_size=224,
            in_chans=3,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            mlp_ratio=5.33334,
            num_classes=0,
            dynamic_img_size=True,
        ),
        _tf(IMAGENET, 256, 224),
        _out,
    ),
    "phikon": Reference(
        lambda: transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False),
        _tf(IMAGENET, 224),
        _hf_cls,
    ),
    "phikon-v2": Reference(
        lambda: transformers.Dinov2Model(
            transformers.Dinov2Config(
                hidden_size=1024,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=16,
                image_size=224,
                layerscale_value=1e-5,
            )
        ),
        _tf(IMAGENET, 224, 224),
        _hf_cls,
    ),
    "hibou-b": Reference(
        lambda: transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                patch_size=14,
                image_size=224,
                num_register_tokens=4,
                use_swiglu_ffn=True,
            )
        ),
        _tf(HIBOU),
        _hf_pooler,
    ),
    "hibou-l": Reference(
        lambda: transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(
                hidden_size=1024,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=14,
                image_size=224,
                num_register_tokens=4,
                use_swiglu_ffn=True,
            )
        ),
        _tf(HIBOU),
        _hf_pooler,
    ),
    "kaiko-vits16": _kaiko("vit_small_patch16_224"),
    "kaiko-vits8": _kaiko("vit_small_patch8_224"),
    "kaiko-vitb16": _kaiko("vit_base_patch16_224"),
    "kaiko-vitb8": _kaiko("vit_base_patch8_224"),
    "kaiko-vitl14": _kaiko("vit_large_patch14_reg4_dinov2", img=518),
    "conch-v1.5": Reference(
        _TridentConch,
        T.Compose(
            [
                T.Resize(448, interpolation=T.InterpolationMode.BILINEAR),
                T.CenterCrop(448),
                T.ToTensor(),
                T.Normalize(*IMAGENET),
            ]
        ),
        _out,
    ),
    "ctranspath": Reference(
        _ctranspath,
        T.Compose(
            [
                T.Resize(224, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                T.ToTensor(),
                T.Normalize(*IMAGENET),
            ]
        ),
        _out,
    ),
    "lunit-vits8": Reference(
        lambda: timm.create_model(
            "vit_small_patch8_224", num_classes=0, img_size=224, dynamic_img_size=True
        ),
        _tf(LUNIT, 224, 224),
        _out,
    ),
}


def test_every_registered_model_has_a_reference_and_terms() -> None:
    assert set(REFERENCES) == {fm.name for fm in FOUNDATION}
    for fm in FOUNDATION:
        assert fm.licence and fm.paper and fm.page.startswith("https://huggingface.co/")
        assert fm.precision in ("float16", "bfloat16", "float32")


# -- configuration: every model, giants included, on the meta device ----------------------


@pytest.mark.parametrize("name", [fm.name for fm in FOUNDATION])
def test_architecture_matches_the_authors_configuration(name: str) -> None:
    from histosic.embed.builders.foundation import Pooled, architecture

    fm = by_name(name)
    with torch.device("meta"):
        ours, prefix = architecture(fm)
        theirs = REFERENCES[name].build()
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert mine == ref
    n_params = sum(p.numel() for p in ours.parameters())
    assert abs(n_params - fm.params) / fm.params < 0.01, n_params
    x = torch.empty(2, 3, fm.input_size, fm.input_size, device="meta")
    with torch.device("meta"):
        y = Pooled(ours, fm.loader, fm.pool, prefix)(x)
    assert tuple(y.shape) == (2, fm.dim)


# -- end to end: random weights in a hub cache, `histosic embed` offline, reference -------


def _perturbed(model: nn.Module) -> nn.Module:
    """Random weights everywhere (LayerScale 1e-5 would otherwise mute every block)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def write_hub_cache(cache: Path, fm: Foundation, model: nn.Module) -> Path:
    """Write ``model``'s weights as ``huggingface_hub`` caches a download; the snapshot folder."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / (f"{fm.repo_type}s--" + fm.repo.replace("/", "--"))
    snap = repo / "snapshots" / revision
    (snap / fm.filename).parent.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if fm.filename.endswith(".safetensors"):
        save_file(state, str(snap / fm.filename))
    elif fm.filename.endswith(".pth"):  # CHIEF_CTransPath.pth: the state under "model"
        torch.save({"model": state}, snap / fm.filename)
    else:
        torch.save(state, snap / fm.filename)
    config = getattr(model, "config", None)
    if config is not None:  # transformers models ship their config.json
        config.to_json_file(str(snap / "config.json"))
    else:  # timm's hub layout: architecture and arguments (documentation only here)
        (snap / "config.json").write_text(json.dumps({"architecture": fm.arch}))
    return snap


def _crop(digestpath_jpg: Path, out: Path, side: int) -> Path:
    with Image.open(digestpath_jpg) as im:
        im.convert("RGB").crop((1800, 1800, 1800 + side, 1800 + side)).save(out)
    return out


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory, digestpath_jpg: Path) -> Path:
    """A 512 x 512 crop of the real DigestPath image (0.5 um/px) as a PNG: a few patches."""
    return _crop(digestpath_jpg, tmp_path_factory.mktemp("region") / "region.png", 512)


@pytest.fixture(scope="module")
def big_region(tmp_path_factory: pytest.TempPathFactory, digestpath_jpg: Path) -> Path:
    """1024 x 1024: four tiles of 512 px (CONCH v1.5's)."""
    return _crop(digestpath_jpg, tmp_path_factory.mktemp("region") / "big.png", 1024)


def run_embed(
    region: Path, out: Path, model: str, cache: Path, *extra: str, device: str = "cpu"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "server"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cache.parent / "hf-home"),
        "HF_HUB_CACHE": str(cache),
        "HISTOSIC_OFFLINE": "1",
    }
    env.pop("HF_TOKEN", None)
    cmd = [sys.executable, "-m", "histosic", "embed", str(region), "--slide-mpp", "0.5"]
    cmd += ["--model", model, "--out", str(out), "--overlap", "0", "--tissue-threshold", "0"]
    cmd += ["--workers", "0", "--device", device, "--batch-size", "4", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _reference(name: str, model: nn.Module, region: Path, coords: np.ndarray, side: int) -> Any:
    ref = REFERENCES[name]
    with Image.open(region) as im:
        rgb = im.convert("RGB")
        patches = [rgb.crop((int(x), int(y), int(x) + side, int(y) + side)) for x, y in coords]
    x = torch.stack([ref.transform(p) for p in patches])
    with torch.inference_mode():
        return ref.pool(model, x).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(1)
    den: np.ndarray = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out: np.ndarray = num / den
    return out


def _e2e_params() -> list[Any]:
    out = []
    for fm in FOUNDATION:
        if fm.name in GIANT:
            continue
        marks = [pytest.mark.slow] if fm.name in LARGE else []
        out.append(pytest.param(fm.name, marks=marks, id=fm.name))
    return out


@pytest.mark.parametrize("name", _e2e_params())
def test_embed_offline_from_the_hub_cache_matches_the_authors_forward(
    name: str, region: Path, big_region: Path, tmp_path: Path
) -> None:
    fm = by_name(name)
    side = fm.patch_size  # the CLI's default patch size for the model: the authors' tile
    if side > 256:
        region = big_region
    torch.manual_seed(1)
    model = _perturbed(REFERENCES[name].build())
    cache = tmp_path / "hub"
    write_hub_cache(cache, fm, model)
    out = tmp_path / "out.h5"
    done = run_embed(region, out, name, cache)
    assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(out, "r") as f:
        feats = f["features"][:]
        coords = f["coords"][:]
        assert f["features"].attrs["encoder"] == name
    assert feats.shape == (4, fm.dim) and len(coords) == 4
    cos = _cosine(feats, _reference(name, model, region, coords, side))
    assert cos.min() >= 0.9999, cos


def test_weights_flag_takes_a_file_or_a_hub_folder(region: Path, tmp_path: Path) -> None:
    fm = by_name("kaiko-vits16")
    torch.manual_seed(2)
    model = _perturbed(REFERENCES[fm.name].build())
    snap = write_hub_cache(tmp_path / "elsewhere", fm, model)
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    ref = None
    for i, weights in enumerate((snap / fm.filename, tmp_path / "elsewhere", snap)):
        out = tmp_path / f"out{i}.h5"
        done = run_embed(region, out, fm.name, empty, "--weights", str(weights))
        assert done.returncode == 0, done.stderr[-2000:]
        with h5py.File(out, "r") as f:
            feats, coords = f["features"][:], f["coords"][:]
        if ref is None:
            ref = _reference(fm.name, model, region, coords, fm.patch_size)
        assert _cosine(feats, ref).min() >= 0.9999


# -- errors: one line, before any slide is read, nothing written ---------------------------


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_offline_without_cache_fails_in_one_line(region: Path, tmp_path: Path) -> None:
    empty = tmp_path / "hub"
    empty.mkdir()
    out = tmp_path / "out"
    line = _one_line_error(run_embed(region, out, "kaiko-vits16", empty))
    assert "not in the Hugging Face cache and offline" in line
    assert not out.exists()


def test_gated_model_without_token_fails_before_any_slide_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Online (as far as histosic can tell) but no token: the gated model is refused at once.
    # The slide does not even exist: the refusal comes before it would be opened.
    from histosic.embed import hub
    from histosic.embed.pipeline import embed_slide
    from histosic.errors import ModelUnavailableError

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "token", lambda: None)
    monkeypatch.setattr(hub, "cached", lambda fm: None)
    with pytest.raises(ModelUnavailableError) as err:
        embed_slide(tmp_path / "no-such-slide.svs", tmp_path / "out", model="uni")
    msg = str(err.value)
    assert "gated: request access at https://huggingface.co/MahmoodLab/UNI" in msg
    assert "HF_TOKEN" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_corrupt_and_wrong_architecture_weights_fail_cleanly(region: Path, tmp_path: Path) -> None:
    fm = by_name("kaiko-vits16")
    empty = tmp_path / "hub"
    empty.mkdir()
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    line = _one_line_error(
        run_embed(region, tmp_path / "a", fm.name, empty, "--weights", str(corrupt))
    )
    assert "is not a weights file that loads safely" in line
    # ViT-S/8 weights given to the ViT-S/16 model: the patch embedding does not fit
    other = by_name("kaiko-vits8")
    snap = write_hub_cache(tmp_path / "other", other, REFERENCES[other.name].build())
    line = _one_line_error(
        run_embed(region, tmp_path / "b", fm.name, empty, "--weights", str(snap / other.filename))
    )
    assert "do not fit kaiko-vits16" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob("**/*.partial"))


# -- checkpoint: takes a vision transformer ------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("vit_small_patch16_224", {}),  # with its classifier head, which is dropped
        ("vit_base_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5, **_swiglu()}),
        ("vit_small_patch16_224", {"global_pool": "avg", "class_token": False, "fc_norm": True}),
    ],
    ids=["vit-s16-head", "vit-b14-reg4-swiglu", "vit-s16-avg"],
)
def test_checkpoint_takes_a_vision_transformer(
    arch: str, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    from histosic.embed.registry import get_model_info, load_model

    torch.manual_seed(3)
    with_head = _perturbed(timm.create_model(arch, pretrained=False, **kwargs))
    path = tmp_path / "vit.pt"
    torch.save({"model": {f"module.{k}": v for k, v in with_head.state_dict().items()}}, path)
    info = get_model_info(f"checkpoint:{path}", check=False)
    assert info.dim == with_head.num_features and info.input_size == 224
    loaded = load_model(f"checkpoint:{path}")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        head: Any = with_head
        want = head.forward_head(head.forward_features(x), pre_logits=True)
        got = loaded.module(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# -- timm:hf-hub:<org>/<name> from a filled cache, offline ----------------------------------


def test_timm_hub_model_from_the_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Callable[..., Any]
) -> None:
    import huggingface_hub.constants as hf_constants

    from histosic.embed.registry import get_model_info, load_model
    from histosic.errors import ModelUnavailableError

    settings(offline=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    name = "timm:hf-hub:someone/vit-s16-path"
    with pytest.raises(ModelUnavailableError, match=r"config\.json is not in the Hugging Face"):
        get_model_info(name, check=False)
    # timm's hub layout: config.json (architecture, arguments, pretrained config) and weights
    torch.manual_seed(4)
    ref = _perturbed(timm.create_model("vit_small_patch16_224", num_classes=0))
    snap = tmp_path / "hub" / "models--someone--vit-s16-path" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    config = {
        "architecture": "vit_small_patch16_224",
        "num_classes": 0,
        "model_args": {"dynamic_img_size": True},
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "mean": [0.7, 0.6, 0.7],
            "std": [0.2, 0.25, 0.2],
            "num_classes": 0,
        },
    }
    (snap / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, str(snap / "model.safetensors")
    )
    info = get_model_info(name)
    assert info.available, info.reason
    assert (info.dim, info.input_size, info.mean) == (384, 224, (0.7, 0.6, 0.7))
    loaded = load_model(name)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), ref(x))


def test_models_doc_holds_the_current_table() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("models_table", REPO / "scripts/models_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.table() in (REPO / "docs" / "MODELS.md").read_text(), (
        "docs/MODELS.md is stale: run python scripts/models_table.py --write"
    )


def test_missing_weights_path_fails_in_one_line_before_any_slide(tmp_path: Path) -> None:
    from histosic.embed.pipeline import embed_slide
    from histosic.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError) as err:
        embed_slide(tmp_path / "no-slide.svs", tmp_path / "out", model=f"uni:{tmp_path}/nope.bin")
    assert str(err.value).startswith("uni: weights path ") and "does not exist" in str(err.value)
    assert str(err.value).count("uni:") == 1 + str(tmp_path).count("uni:")
    assert not (tmp_path / "out").exists()


def test_ctranspath_rebuilds_only_the_window_masks(tmp_path: Path) -> None:
    """CHIEF's file may lack the attention masks; any other missing key is refused."""
    from histosic.embed.builders.foundation import build
    from histosic.errors import CorruptFileError

    fm = by_name("ctranspath")
    torch.manual_seed(5)
    ref = _perturbed(REFERENCES[fm.name].build())
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("attn_mask")}
    path = tmp_path / "CHIEF_CTransPath.pth"
    torch.save({"model": state}, path)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(build(fm.name, str(path))(x), ref(x))
    del state["layers.3.blocks.1.mlp.fc2.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(CorruptFileError, match=r"do not fit ctranspath .*mlp\.fc2\.weight"):
        build(fm.name, str(path))


def test_a_vit_is_built_at_the_size_its_weights_were_made_for(tmp_path: Path) -> None:
    """Weights with a 28 x 28 position table (448 px) load into a row built at 224 px, and the
    result is the model at 448 px resampling its table for 224 px input, as timm does it."""
    from histosic.embed.builders.foundation import build

    fm = by_name("kaiko-vits16")
    torch.manual_seed(6)
    ref = _perturbed(timm.create_model(fm.arch, num_classes=0, img_size=448, dynamic_img_size=True))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(build(fm.name, str(path))(x), ref(x))
    # a table that is no square grid still fails with the mismatch named
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    state["pos_embed"] = state["pos_embed"][:, :-3]
    save_file(state, str(path))
    from histosic.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match="pos_embed"):
        build(fm.name, str(path))


def test_a_cache_filled_under_a_former_repository_name_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hf_constants

    from histosic.embed import hub

    fm = by_name("kaiko-vitl14")
    assert fm.former_repos
    old = Foundation(**{**fm.__dict__, "repo": fm.former_repos[0], "former_repos": ()})
    assert hub.cached(fm) is None or not str(hub.cached(fm)).startswith(str(tmp_path))
    snap = write_hub_cache(tmp_path, old, nn.Linear(1, 1))
    assert hub.local(fm, str(tmp_path)) == snap / fm.filename  # --weights <hub cache folder>
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub.cached(fm) == snap / fm.filename  # the hub cache itself


@pytest.mark.slow
def test_conch_resamples_a_position_table_of_another_grid_as_the_released_tower(
    tmp_path: Path,
) -> None:
    """A file whose table is 28 x 28 (448 px) loads as Trident's create_model_from_pretrained
    loads it: resampled to the trunk's 14 x 14 (bilinear, no antialiasing), then interpolated
    for each input."""
    from timm.layers import resample_abs_pos_embed  # type: ignore[attr-defined]

    from histosic.embed.builders.foundation import build

    fm = by_name("conch-v1.5")
    torch.manual_seed(7)
    ref: Any = _perturbed(_TridentConch())
    big = torch.randn(1, 1 + 28 * 28, 1024, generator=torch.Generator().manual_seed(8)) * 0.02
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    state["trunk.pos_embed"] = big
    path = tmp_path / fm.filename
    torch.save(state, path)
    with torch.no_grad():  # Trident: resize_pos_embed(model.trunk, state_dict['trunk.pos_embed'])
        ref.trunk.pos_embed.copy_(
            resample_abs_pos_embed(
                big,
                new_size=(14, 14),
                num_prefix_tokens=1,
                interpolation="bilinear",
                antialias=False,
                verbose=False,
            )
        )
    x = torch.rand(2, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(build(fm.name, str(path))(x), ref(x), rtol=1e-4, atol=1e-4)


# -- on a GPU: the authors' precision, and a batch that fits (pytest -m gpu) ----------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["kaiko-vits16", "h0-mini", "conch-v1.5", "ctranspath"])
def test_cuda_in_the_authors_precision_matches_the_cpu_reference(
    name: str, region: Path, big_region: Path, tmp_path: Path
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    fm = by_name(name)
    region = big_region if fm.patch_size > 256 else region
    torch.manual_seed(1)
    model = _perturbed(REFERENCES[name].build())
    cache = tmp_path / "hub"
    write_hub_cache(cache, fm, model)
    out = tmp_path / "out.h5"
    done = run_embed(region, out, name, cache, device="cuda")
    assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(out, "r") as f:
        feats, coords = f["features"][:], f["coords"][:]
    cos = _cosine(feats, _reference(name, model, region, coords, fm.patch_size))
    # float16/bfloat16 autocast where the authors use it: close to the fp32 reference, not equal
    assert cos.min() >= (0.9999 if fm.precision == "float32" else 0.99), cos


@pytest.mark.gpu
def test_the_batch_is_halved_until_a_forward_pass_fits_on_the_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from histosic.embed.pipeline import fit_batch_size

    model = REFERENCES["kaiko-vits16"].build().cuda().eval().half()

    def forward(batch: int) -> None:
        with torch.inference_mode():
            model(torch.zeros(batch, 3, 224, 224, device="cuda", dtype=torch.float16))
        torch.cuda.synchronize()

    free, _ = torch.cuda.mem_get_info()
    too_many = 1 << max(1, int(free // (3 * 224 * 224 * 2)).bit_length() + 1)  # inputs > free
    got = fit_batch_size(forward, too_many)
    assert 1 <= got < too_many
    forward(got)  # the chosen batch runs


def test_weights_id_names_the_snapshot_revision_of_a_file_in_a_sub_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hf_constants

    from histosic.embed import hub

    fm = by_name("ctranspath")  # fm_v1/ctranspath/CHIEF_CTransPath.pth in a dataset repository
    write_hub_cache(tmp_path, fm, nn.Linear(1, 1))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub.weights_id(fm.name, "") == (
        f"hf:{fm.repo}/{fm.filename}@0123456789abcdef0123456789abcdef01234567"
    )


def test_weights_flag_takes_a_folder_holding_the_file_of_a_sub_folder(tmp_path: Path) -> None:
    """CHIEF_CTransPath.pth copied into a plain folder is found by its own name."""
    from histosic.embed import hub

    fm = by_name("ctranspath")
    (tmp_path / "CHIEF_CTransPath.pth").write_bytes(b"x")
    assert hub.local(fm, str(tmp_path)) == tmp_path / "CHIEF_CTransPath.pth"
