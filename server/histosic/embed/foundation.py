"""Pathology foundation models: one row each, as their authors run them (torch-free data).

Every row names the exact architecture (a timm model name and its keyword arguments, or a
Hugging Face ``transformers`` class and its configuration), the file the weights come in on the
Hugging Face hub, the preprocessing (input size, resize-then-crop, mean and std), the pooling of
the output tokens, the precision the authors use on a GPU, the resolution the model was trained
at, the licence, and whether the hub gates access. Sources: each model's card on the hub (the page
in :attr:`Foundation.page`) and Trident's ``trident/patch_encoder_models/load.py`` (Mahmood lab,
mahmoodlab/TRIDENT), which reproduces the cards' loading code; our builder
(:mod:`histosic.embed.builders.foundation`) is written from those descriptions, not copied.

Pooling:

- ``token``: the class token after the final norm (timm ``global_pool="token"``; for
  ``transformers`` models ``last_hidden_state[:, 0]``, which is after the final layer norm).
- ``cls+mean``: the class token concatenated with the mean of the patch tokens, the register
  tokens excluded (Virchow, Virchow2: ``torch.cat([x[:, 0], x[:, num_prefix_tokens:].mean(1)])``).
- ``pooler``: ``transformers``' ``pooler_output`` (Hibou: the normed class token).
- ``avg``: the mean of the last stage's tokens after the final norm, the network's own head
  (CTransPath's Swin: ``forward`` with ``head = Identity``).
- ``attn-pool``: CONCH's attentional pooler (one learned query attending over all tokens after
  the final norm), then its layer norm: the image embedding of the contrastive head.

CTransPath is built with ``timm-ctp`` (PyPI, the timm 0.5.4 its authors modified, installed as the
module ``timm_ctp`` beside timm; in the ``foundation`` extra) and histosic's own convolutional
stem, written from the TransPath paper's description. CONCH v1.5's vision tower is timm's ViT-L/16
with histosic's own attentional pooler and position-table interpolation, written from the
description of the tower that Trident vendors (``model_zoo/conchv1_5``; TITAN's remote code on
the hub holds the same tower).

Not registered: MUSK (installed from its GitHub repository; ``musk`` on PyPI is an unrelated
package, and its BEiT-3 tower needs torchscale's code), whose code no package index has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FOUNDATION", "Foundation", "by_name"]

Triple = tuple[float, float, float]
Pool = Literal["token", "cls+mean", "pooler", "avg", "attn-pool"]
Loader = Literal["timm", "transformers", "timm_ctp", "conch"]

IMAGENET: tuple[Triple, Triple] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS: tuple[Triple, Triple] = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HIBOU: tuple[Triple, Triple] = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
KAIKO: tuple[Triple, Triple] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LUNIT: tuple[Triple, Triple] = (
    (0.70322989, 0.53606487, 0.66096631),
    (0.21716536, 0.26081574, 0.20723464),
)

CC_BY_NC_ND = "CC-BY-NC-ND-4.0 (non-commercial, no derivatives)"
APACHE = "Apache-2.0"


@dataclass(frozen=True)
class Foundation:
    """One foundation model: architecture, weights, preprocessing, pooling, terms.

    Attributes
    ----------
    name : str
        The registry name (``histosic embed --model NAME``).
    title : str
        The authors' name of the model and its architecture.
    repo, filename : str
        Hugging Face repository and the weights file in it (a path inside the repository).
    repo_type : {"model", "dataset"}
        The kind of hub repository (CTransPath's weights are in a dataset repository).
    former_repos : tuple of str
        Earlier names of the repository (the hub redirects them): a cache filled under one of
        them, by Trident or an older histosic, is used as well.
    loader : {"timm", "transformers", "timm_ctp", "conch"}
        What builds the architecture (:attr:`library` is the module to import; ``conch``:
        histosic's CONCH tower over timm).
    arch : str
        timm (or ``timm_ctp``) model name, or the ``transformers`` model class (``ViTModel``,
        ``Dinov2Model``, ``Dinov2WithRegistersModel``).
    kwargs : tuple of (str, object)
        timm ``create_model`` keyword arguments, or the ``transformers`` configuration.
    swiglu : bool
        timm: ``mlp_layer=SwiGLUPacked, act_layer=SiLU`` (not expressible without torch).
    pool : {"token", "cls+mean", "pooler", "avg", "attn-pool"}
    dim, input_size : int
        Embedding length; side of the square the network sees.
    crop_from : int
        Resize the patch to this side, then centre-crop ``input_size`` (0: resize to
        ``input_size`` directly). GigaPath: 256 -> 224.
    tile : int
        The tiling patch side the authors use when it is neither ``crop_from`` nor
        ``input_size`` (CONCH v1.5: 512 px at 20x, resized to 448); 0 otherwise.
    mean, std : (float, float, float)
    mpp : float
        Microns per pixel the model was trained at (the default ``--mpp`` to use).
    precision : {"float16", "bfloat16", "float32"}
        The inference precision the authors use on a GPU.
    params : int
        Number of parameters of the architecture (a configuration check in the tests).
    licence, page, paper : str
    gated : bool
        The hub asks users to accept terms before download (a token is needed).
    note : str
        What a user must know beyond the card (choices made where sources differ).
    """

    name: str
    title: str
    repo: str
    filename: str
    loader: Loader
    arch: str
    kwargs: tuple[tuple[str, object], ...]
    pool: Pool
    dim: int
    input_size: int
    mean: Triple
    std: Triple
    mpp: float
    precision: Literal["float16", "bfloat16", "float32"]
    params: int
    licence: str
    gated: bool
    paper: str
    swiglu: bool = False
    crop_from: int = 0
    tile: int = 0
    note: str = ""
    repo_type: Literal["model", "dataset"] = "model"
    former_repos: tuple[str, ...] = ()

    @property
    def page(self) -> str:
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"https://huggingface.co/{kind}{self.repo}"

    @property
    def library(self) -> str:
        """The Python module that builds the architecture (``timm``, ``transformers``, ...)."""
        return "timm" if self.loader == "conch" else self.loader

    @property
    def patch_size(self) -> int:
        """The default tiling patch side (``--patch-size``): the authors' tile, else the side at
        which no resampling happens."""
        return self.tile or self.crop_from or self.input_size


_KAIKO_REPO = "1aurent/{}.kaiko_ai_towards_large_pathology_fms"


def _kaiko(
    name: str,
    arch: str,
    dim: int,
    params: int,
    img: int = 224,
    repo: str = "",
    former_repos: tuple[str, ...] = (),
) -> Foundation:
    kwargs: tuple[tuple[str, object], ...] = (("dynamic_img_size", True),)
    if img != 224:
        kwargs = (("img_size", img), *kwargs)
    return Foundation(
        name=f"kaiko-{name}",
        title=f"kaiko.ai {name.upper()} (DINO/DINOv2 on TCGA; timm port {arch})",
        repo=repo or _KAIKO_REPO.format(arch),
        filename="model.safetensors",
        loader="timm",
        arch=arch,
        kwargs=kwargs,
        pool="token",
        dim=dim,
        input_size=224,
        mean=KAIKO[0],
        std=KAIKO[1],
        mpp=0.5,
        precision="float32",
        params=params,
        licence="kaiko.ai non-commercial research licence (see the model card)",
        gated=False,
        paper="Aben et al. 2024, arXiv:2404.15217 (kaiko.ai, Towards Large-Scale Training of "
        "Pathology Foundation Models)",
        note="trained at several resolutions; 0.5 um/px is the middle one",
        former_repos=former_repos,
    )


_UNI2_KWARGS: tuple[tuple[str, object], ...] = (
    ("img_size", 224),
    ("patch_size", 14),
    ("depth", 24),
    ("num_heads", 24),
    ("init_values", 1e-5),
    ("embed_dim", 1536),
    ("mlp_ratio", 2.66667 * 2),
    ("no_embed_class", True),
    ("reg_tokens", 8),
    ("dynamic_img_size", True),
)
_VIRCHOW_KWARGS: tuple[tuple[str, object], ...] = (
    ("img_size", 224),
    ("init_values", 1e-5),
    ("mlp_ratio", 5.3375),
    ("global_pool", ""),
    ("dynamic_img_size", True),
)
_HOPTIMUS_KWARGS: tuple[tuple[str, object], ...] = (
    ("img_size", 224),
    ("global_pool", "token"),
    ("init_values", 1e-5),
    ("dynamic_img_size", True),
)

FOUNDATION: tuple[Foundation, ...] = (
    Foundation(
        name="uni",
        title="UNI (Mahmood lab), ViT-L/16, DINOv2 on Mass-100K",
        repo="MahmoodLab/UNI",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_large_patch16_224",
        kwargs=(("img_size", 224), ("patch_size", 16), ("init_values", 1e-5)),
        pool="token",
        dim=1024,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float16",
        params=303_350_000,
        licence=CC_BY_NC_ND,
        gated=True,
        paper="Chen et al. 2024, Nature Medicine 30:850 (UNI)",
    ),
    Foundation(
        name="uni2-h",
        title="UNI2-h (Mahmood lab), ViT-H/14 with 8 registers, SwiGLU",
        repo="MahmoodLab/UNI2-h",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_giant_patch14_224",
        kwargs=_UNI2_KWARGS,
        swiglu=True,
        pool="token",
        dim=1536,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="bfloat16",
        params=681_000_000,
        licence=CC_BY_NC_ND,
        gated=True,
        paper="Chen et al. 2024, Nature Medicine 30:850 (UNI; UNI2-h model card)",
    ),
    Foundation(
        name="virchow",
        title="Virchow (Paige), ViT-H/14, SwiGLU; class token + mean patch token",
        repo="paige-ai/Virchow",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_huge_patch14_224",
        kwargs=_VIRCHOW_KWARGS,
        swiglu=True,
        pool="cls+mean",
        dim=2560,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float16",
        params=631_000_000,
        licence=APACHE,
        gated=True,
        paper="Vorontsov et al. 2024, Nature Medicine 30:2924 (Virchow)",
    ),
    Foundation(
        name="virchow2",
        title="Virchow2 (Paige), ViT-H/14 with 4 registers, SwiGLU; class + mean patch token",
        repo="paige-ai/Virchow2",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_huge_patch14_224",
        kwargs=(*_VIRCHOW_KWARGS, ("reg_tokens", 4)),
        swiglu=True,
        pool="cls+mean",
        dim=2560,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float16",
        params=631_000_000,
        licence=CC_BY_NC_ND,
        gated=True,
        paper="Zimmermann et al. 2024, arXiv:2408.00738 (Virchow2)",
        note="trained at 5x to 40x; 20x (0.5 um/px) is the common setting",
    ),
    Foundation(
        name="h-optimus-0",
        title="H-optimus-0 (Bioptimus), ViT-g/14 with 4 registers",
        repo="bioptimus/H-optimus-0",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs=_HOPTIMUS_KWARGS,
        pool="token",
        dim=1536,
        input_size=224,
        mean=BIOPTIMUS[0],
        std=BIOPTIMUS[1],
        mpp=0.5,
        precision="float16",
        params=1_134_000_000,
        licence=APACHE,
        gated=True,
        paper="Saillard et al. 2024, H-optimus-0 (Bioptimus, github.com/bioptimus/releases)",
    ),
    Foundation(
        name="h-optimus-1",
        title="H-optimus-1 (Bioptimus), ViT-g/14 with 4 registers",
        repo="bioptimus/H-optimus-1",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs=_HOPTIMUS_KWARGS,
        pool="token",
        dim=1536,
        input_size=224,
        mean=BIOPTIMUS[0],
        std=BIOPTIMUS[1],
        mpp=0.5,
        precision="float16",
        params=1_134_000_000,
        licence="Bioptimus non-commercial licence (see the model card)",
        gated=True,
        paper="Bioptimus 2025, H-optimus-1 model card",
    ),
    Foundation(
        name="h0-mini",
        title="H0-mini (Bioptimus), ViT-B/14 with 4 registers, SwiGLU, distilled from H-optimus-0",
        repo="bioptimus/H0-mini",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_base_patch14_reg4_dinov2",
        kwargs=(("img_size", 224), ("init_values", 1e-5), ("dynamic_img_size", True)),
        swiglu=True,
        pool="token",
        dim=768,
        input_size=224,
        mean=BIOPTIMUS[0],
        std=BIOPTIMUS[1],
        mpp=0.5,
        precision="float16",
        params=71_900_000,
        licence=CC_BY_NC_ND,
        gated=True,
        paper="Filiot et al. 2025, arXiv:2501.16239 (distilling foundation models, H0-mini)",
        note="the class token, as Trident's default; the card also shows class + mean patch "
        "token. The MLP width is timm's default for this name with SwiGLU (the card's call), "
        "not checked against the released config.json",
    ),
    Foundation(
        name="gigapath",
        title="Prov-GigaPath tile encoder (Providence, Microsoft), ViT-g/16",
        repo="prov-gigapath/prov-gigapath",
        filename="pytorch_model.bin",
        loader="timm",
        arch="vit_giant_patch14_dinov2",
        kwargs=(
            ("img_size", 224),
            ("in_chans", 3),
            ("patch_size", 16),
            ("embed_dim", 1536),
            ("depth", 40),
            ("num_heads", 24),
            ("mlp_ratio", 5.33334),
            ("dynamic_img_size", True),
        ),
        pool="token",
        dim=1536,
        input_size=224,
        crop_from=256,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float16",
        params=1_134_000_000,
        licence=APACHE,
        gated=True,
        paper="Xu et al. 2024, Nature 630:181 (Prov-GigaPath)",
    ),
    Foundation(
        name="phikon",
        title="Phikon (Owkin), ViT-B/16, iBOT on TCGA",
        repo="owkin/phikon",
        filename="pytorch_model.bin",
        loader="transformers",
        arch="ViTModel",
        kwargs=(),
        pool="token",
        dim=768,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float32",
        params=85_800_000,
        licence="Owkin non-commercial licence (see the model card)",
        gated=False,
        paper="Filiot et al. 2023, medRxiv 2023.07.21.23292757 (Phikon)",
    ),
    Foundation(
        name="phikon-v2",
        title="Phikon-v2 (Owkin), ViT-L/16, DINOv2 on PANCAN-XL",
        repo="owkin/phikon-v2",
        filename="model.safetensors",
        loader="transformers",
        arch="Dinov2Model",
        kwargs=(
            ("hidden_size", 1024),
            ("num_hidden_layers", 24),
            ("num_attention_heads", 16),
            ("patch_size", 16),
            ("image_size", 224),
            ("layerscale_value", 1e-5),
        ),
        pool="token",
        dim=1024,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float32",
        params=303_300_000,
        licence="Owkin non-commercial licence (see the model card)",
        gated=False,
        paper="Filiot et al. 2024, arXiv:2409.09173 (Phikon-v2)",
        note="the configuration comes from the config.json beside the weights when there is one",
    ),
    Foundation(
        name="hibou-b",
        title="Hibou-B (HistAI), ViT-B/14 with 4 registers, DINOv2",
        repo="histai/hibou-b",
        filename="model.safetensors",
        loader="transformers",
        arch="Dinov2WithRegistersModel",
        kwargs=(
            ("hidden_size", 768),
            ("num_hidden_layers", 12),
            ("num_attention_heads", 12),
            ("patch_size", 14),
            ("image_size", 224),
            ("num_register_tokens", 4),
            ("use_swiglu_ffn", True),  # config.json of histai/hibou-b
        ),
        pool="pooler",
        dim=768,
        input_size=224,
        mean=HIBOU[0],
        std=HIBOU[1],
        mpp=0.5,
        precision="float32",
        params=85_700_000,
        licence=APACHE,
        gated=False,
        paper="Nechaev et al. 2024, arXiv:2406.05074 (Hibou)",
        note="the card loads remote code (trust_remote_code); histosic builds transformers' own "
        "DINOv2-with-registers with the SwiGLU MLP of its config.json instead, whose equivalence "
        "to that code is not verified on the released weights",
    ),
    Foundation(
        name="hibou-l",
        title="Hibou-L (HistAI), ViT-L/14 with 4 registers, DINOv2",
        repo="histai/hibou-L",
        filename="model.safetensors",
        loader="transformers",
        arch="Dinov2WithRegistersModel",
        kwargs=(
            ("hidden_size", 1024),
            ("num_hidden_layers", 24),
            ("num_attention_heads", 16),
            ("patch_size", 14),
            ("image_size", 224),
            ("num_register_tokens", 4),
            ("use_swiglu_ffn", True),  # as hibou-b (Hibou-L's config.json not seen)
        ),
        pool="pooler",
        dim=1024,
        input_size=224,
        mean=HIBOU[0],
        std=HIBOU[1],
        mpp=0.5,
        precision="float32",
        params=303_700_000,
        licence=APACHE,
        gated=True,
        paper="Nechaev et al. 2024, arXiv:2406.05074 (Hibou)",
        note="as hibou-b: transformers' DINOv2-with-registers stands in for the card's remote code",
    ),
    _kaiko("vits16", "vit_small_patch16_224", 384, 21_700_000),
    _kaiko("vits8", "vit_small_patch8_224", 384, 21_700_000),
    _kaiko("vitb16", "vit_base_patch16_224", 768, 85_800_000),
    _kaiko("vitb8", "vit_base_patch8_224", 768, 85_800_000),
    _kaiko(
        "vitl14",
        "vit_large_patch14_reg4_dinov2",
        1024,
        304_400_000,
        img=518,
        # the hub shows the repository under this name now; Trident asks for the old one
        repo=_KAIKO_REPO.format("vit_large_patch14_reg4_224"),
        former_repos=(_KAIKO_REPO.format("vit_large_patch14_reg4_dinov2"),),
    ),
    Foundation(
        name="conch-v1.5",
        title="CONCH v1.5 (Mahmood lab), ViT-L/16 at 448 px with an attentional pooler; "
        "TITAN's patch encoder",
        repo="MahmoodLab/conchv1_5",
        filename="pytorch_model_vision.bin",
        loader="conch",
        arch="vit_large_patch16_224",
        kwargs=(("img_size", 224), ("init_values", 1.0)),
        pool="attn-pool",
        dim=768,
        input_size=448,
        tile=512,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float16",
        params=306_100_000,
        licence=CC_BY_NC_ND,
        gated=True,
        paper="Ding et al. 2024, arXiv:2411.19666 (TITAN; CONCH v1.5 is its patch encoder)",
        note="512 px tiles at 20x resized to 448, as Trident's and TITAN's examples run it; the "
        "trunk's position table is 14 x 14 and is interpolated (bicubic, DINO style) for 448 px "
        "input, as the released tower does. Built from Trident's vendored tower, not checked "
        "against the released file",
    ),
    Foundation(
        name="ctranspath",
        title="CTransPath (Wang et al.), Swin-T/4 with a convolutional stem; CHIEF's weights",
        repo="MahmoodLab/hest-bench",
        repo_type="dataset",
        filename="fm_v1/ctranspath/CHIEF_CTransPath.pth",
        loader="timm_ctp",
        arch="swin_tiny_patch4_window7_224",
        kwargs=(("img_size", 224),),
        pool="avg",
        dim=768,
        input_size=224,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        mpp=0.5,
        precision="float32",
        params=27_520_000,
        licence="GPL-3.0, non-commercial academic use (the CHIEF repository's terms)",
        gated=True,
        paper="Wang et al. 2022, Medical Image Analysis 81:102559 (CTransPath); weights of "
        "CHIEF, Wang et al. 2024, Nature 634:970",
        note="the weights Trident and HEST-bench use (CHIEF_CTransPath.pth, the 'model' entry); "
        "the attention masks of the shifted windows are rebuilt, not loaded (they depend only "
        "on the input size); needs timm-ctp (in the foundation extra)",
    ),
    Foundation(
        name="lunit-vits8",
        title="Lunit DINO ViT-S/8 (benchmark-ssl-pathology; timm port)",
        repo="1aurent/vit_small_patch8_224.lunit_dino",
        filename="model.safetensors",
        loader="timm",
        arch="vit_small_patch8_224",
        kwargs=(("dynamic_img_size", True),),
        pool="token",
        dim=384,
        input_size=224,
        mean=LUNIT[0],
        std=LUNIT[1],
        mpp=0.5,
        precision="float32",
        params=21_700_000,
        licence="Lunit non-commercial licence (see the model card)",
        gated=False,
        paper="Kang et al. 2023, CVPR (Benchmarking self-supervised learning on diverse "
        "pathology datasets)",
    ),
)

_BY_NAME = {fm.name: fm for fm in FOUNDATION}


def by_name(name: str) -> Foundation:
    """The row of a foundation model (KeyError for any other name)."""
    return _BY_NAME[name]
