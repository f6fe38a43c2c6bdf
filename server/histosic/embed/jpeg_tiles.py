"""JPEG tiles read raw on the CPU and decoded on the device (nvJPEG through torchvision).

Reading and JPEG decoding on the CPU limit a GPU (docs/RAY.md): most SVS and many TIFF slides
store their levels as JPEG tiles. Here a CPU worker only reads the compressed bytes of the tiles a
batch of patches touches (:func:`read_jpeg_batch`, a file read, no decoding), and the process that
holds the model decodes them with :func:`torchvision.io.decode_jpeg` on its device (nvJPEG on
CUDA, libjpeg-turbo on the CPU), stitches the patches and resizes them as the CPU reader does.

Patches are cut exactly as :func:`histosic.embed.pipeline.read_patches` cuts them (same level,
same row runs, same offsets), and on the CPU the decoded pixels are those of OpenSlide's reader
(``tests/test_jpeg_tiles.py``). TIFF's abbreviated streams get their shared tables
(``JPEGTables``) back, and tiles stored as RGB (not YCbCr, as Aperio writes them) an Adobe marker
that tells the decoder not to convert colours. Anything else (another compression, planar
storage, a level that does not match the slide's) is not for this path: :func:`jpeg_level`
returns None and the CPU reader is used. Reading needs no torch (the reading processes do not load
it); decoding imports it.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from histosic.errors import CorruptFileError
from histosic.patches import _resize, patch_runs
from histosic.slides import WHITE_LEVEL, Slide

if TYPE_CHECKING:
    import torch

__all__ = ["JpegBatch", "JpegLevel", "decode_batch", "jpeg_level", "read_jpeg_batch"]

log = logging.getLogger(__name__)

_JPEG = 7  # TIFF compression
_RGB, _YCBCR = 2, 6  # TIFF photometric
# APP14 "Adobe", version 100, flags 0, transform 0: the three components are RGB as they are.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class JpegLevel:
    """Where one pyramid level's JPEG tiles are in the file."""

    path: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tables: bytes | None
    rgb: bool

    @property
    def tiles_across(self) -> int:
        return math.ceil(self.width / self.tile_width)

    def stream(self, raw: bytes) -> bytes:
        """A tile's bytes as a complete JPEG stream."""
        if raw[:2] != b"\xff\xd8":
            raise CorruptFileError(f"a JPEG tile of {self.path} does not start with SOI")
        body = raw[2:]
        if self.tables is not None and len(self.tables) > 4:
            body = self.tables[2:-2] + body  # the shared tables, without their SOI and EOI
        return b"\xff\xd8" + (_ADOBE_RGB if self.rgb else b"") + body


def jpeg_level(slide: Slide, level: int) -> JpegLevel | None:
    """The JPEG tile layout of a slide level, or None when the level is not plain JPEG tiles."""
    if slide.backend not in ("openslide", "tiffslide"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(slide.path) as tf:
            levels = tf.series[0].levels
            if level >= len(levels):
                return None
            page = levels[level].keyframe
            ok = (
                isinstance(page, tifffile.TiffPage)
                and page.compression == _JPEG
                and page.is_tiled
                and page.planarconfig == 1
                and page.samplesperpixel == 3
                and page.photometric in (_RGB, _YCBCR)
                and (page.imagewidth, page.imagelength) == tuple(slide.level_dimensions[level])
            )
            if not ok:
                return None
            return JpegLevel(
                path=str(slide.path),
                width=int(page.imagewidth),
                height=int(page.imagelength),
                tile_width=int(page.tilewidth),
                tile_height=int(page.tilelength),
                offsets=tuple(int(o) for o in page.dataoffsets),
                counts=tuple(int(c) for c in page.databytecounts),
                tables=bytes(page.jpegtables) if page.jpegtables else None,
                rgb=page.photometric == _RGB,
            )
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return None


@dataclass(frozen=True)
class JpegBatch:
    """A batch of patches as the compressed tiles they need and where each patch lies in them.

    ``tiles`` maps a tile's index in the level to its complete JPEG stream; ``origins`` are the
    patches' top-left pixels in the level; each patch is ``side`` pixels square, then resized to
    ``out_size``.
    """

    level: JpegLevel
    tiles: dict[int, bytes]
    origins: npt.NDArray[np.int64]  # (n, 2) level pixels, x then y
    side: int
    out_size: int


def patch_origins(
    coords: npt.NDArray[np.int64], size_level0: int, ds: float, side: int
) -> npt.NDArray[np.int64]:
    """Top-left level pixels of each patch, as :func:`~histosic.embed.pipeline.read_patches`."""
    out = np.empty((int(coords.shape[0]), 2), dtype=np.int64)
    for i, x0, y0, _, offsets in patch_runs(coords, size_level0, ds, side):
        # The level pixel of a level-0 position, as the slide readers place a region.
        lx, ly = int(math.floor(x0 / ds)), int(math.floor(y0 / ds))
        for k, ox in enumerate(offsets, start=i):
            out[k] = (lx + ox, ly)
    return out


def read_jpeg_batch(
    slide: Slide, coords: npt.NDArray[np.int64], size_level0: int, out_size: int, level: JpegLevel
) -> JpegBatch:
    """Read (not decode) the tiles a batch of patches touches: the CPU side of the path."""
    lvl = slide.best_level_for_downsample(size_level0 / out_size)
    ds = slide.level_downsamples[lvl]
    side = max(1, int(math.ceil(size_level0 / ds - 1e-6)))
    origins = patch_origins(coords, size_level0, ds, side)
    needed: set[int] = set()
    across = level.tiles_across
    down = math.ceil(level.height / level.tile_height)
    tw, th = level.tile_width, level.tile_height
    for x, y in origins.tolist():
        for ty in range(max(0, y // th), min(down, (y + side - 1) // th + 1)):
            for tx in range(max(0, x // tw), min(across, (x + side - 1) // tw + 1)):
                needed.add(ty * across + tx)
    tiles: dict[int, bytes] = {}
    with open(level.path, "rb") as f:
        for index in sorted(needed):
            f.seek(level.offsets[index])
            raw = f.read(level.counts[index])
            tiles[index] = level.stream(raw) if raw else b""
    return JpegBatch(level, tiles, origins, side, out_size)


def _decode_on(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image decoding deprecated in favour of TorchCodec; it is
        # what ships with the pinned torch and decodes on the GPU (docs/RAY.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type == "cuda":
            out: list[torch.Tensor] = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            return out
        return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]


def _decode(batch: JpegBatch, device: torch.device) -> dict[int, torch.Tensor]:
    """Every tile of the batch decoded on the device: (tile_h, tile_w, 3) uint8 each.

    A stream the GPU decoder refuses is decoded on the CPU and moved to the device: a slide is
    only failed for tiles that libjpeg cannot decode either.
    """
    import torch

    keys = [k for k, v in batch.tiles.items() if v]
    data = [torch.frombuffer(bytearray(batch.tiles[k]), dtype=torch.uint8) for k in keys]
    try:
        try:
            images = _decode_on(data, device)
        except RuntimeError:
            if device.type == "cpu":
                raise
            log.warning("GPU JPEG decoding failed for %s; decoding on the CPU", batch.level.path)
            images = [img.to(device) for img in _decode_on(data, torch.device("cpu"))]
    except RuntimeError as err:
        raise CorruptFileError(
            f"cannot decode the JPEG tiles of {batch.level.path} ({err}); the file may have "
            "corrupt tiles"
        ) from err
    return {k: img.permute(1, 2, 0) for k, img in zip(keys, images, strict=True)}


def decode_batch(batch: JpegBatch, device: torch.device) -> torch.Tensor:
    """The batch's patches on the device: (n, out_size, out_size, 3) uint8, NHWC.

    Areas outside the level (and empty tiles) are white, as the slide readers make them.
    """
    import torch
    import torch.nn.functional as F

    lv = batch.level
    tiles = _decode(batch, device)
    side, n = batch.side, int(batch.origins.shape[0])
    patches = torch.full((n, side, side, 3), 255, dtype=torch.uint8, device=device)
    tw, th, across = lv.tile_width, lv.tile_height, lv.tiles_across
    for k, (x, y) in enumerate(batch.origins.tolist()):
        for ty in range(max(0, y // th), (y + side - 1) // th + 1):
            for tx in range(max(0, x // tw), (x + side - 1) // tw + 1):
                img = tiles.get(ty * across + tx) if tx < across else None
                if img is None:
                    continue
                # The overlap of the patch, the tile and the level, in level pixels.
                x1, x2 = max(x, tx * tw), min(x + side, (tx + 1) * tw, lv.width)
                y1, y2 = max(y, ty * th), min(y + side, (ty + 1) * th, lv.height)
                if x1 < x2 and y1 < y2:
                    patches[k, y1 - y : y2 - y, x1 - x : x2 - x] = img[
                        y1 - ty * th : y2 - ty * th, x1 - tx * tw : x2 - tx * tw
                    ]
    if side == batch.out_size:
        return patches
    if device.type == "cpu":
        # The CPU reader's own resize (PIL bilinear), so the CPU path gives the same pixels.
        arr = patches.numpy()
        return torch.from_numpy(np.stack([_resize(p, batch.out_size) for p in arr]))
    x = patches.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(batch.out_size, batch.out_size), mode="bilinear", antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def white_fraction_device(patches: torch.Tensor, level: int = WHITE_LEVEL) -> torch.Tensor:
    """:func:`histosic.slides.white_fraction` on the device: float32 (n,)."""
    white = (patches >= level).all(dim=-1).flatten(1)
    # Counts over the size in float64, then float32: the CPU function's rounding.
    return (white.sum(dim=1).double() / max(white.shape[1], 1)).float()
