"""Open whole-slide images and plain images, know their resolution, read regions, find tissue.

Readers, tried in order: OpenSlide (the ``openslide-bin`` wheel brings the library), tiffslide
(pure Python, for TIFFs OpenSlide refuses), and Pillow for ordinary JPEG/PNG/TIFF images, whose
resolution the user gives (``--slide-mpp``). The slide libraries and scikit-image are imported
inside functions so that ``import histosic.slides`` stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from histosic.errors import (
    CorruptFileError,
    HistosicError,
    InvalidInputError,
    SlideNotFoundError,
    UnknownResolutionError,
)

__all__ = [
    "PLAIN_IMAGE_SUFFIXES",
    "Slide",
    "TissueConfig",
    "detect_tissue",
    "open_slide",
    "white_fraction",
]

log = logging.getLogger(__name__)

PLAIN_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Resolutions outside this range are taken for placeholder metadata (72 dpi), not a microscope.
_MPP_RANGE = (0.02, 50.0)
# Pillow refuses bigger images as "decompression bombs"; a plain image slide may be large, but a
# bound still protects a server from a hostile file (about 3 GB of RGB).
_MAX_PLAIN_PIXELS = 1_000_000_000
# Thumbnails are read in strips of about this many pixels (about 200 MB of RGBA).
_STRIP_PIXELS = 50_000_000
# A pixel whose every channel is at least this bright is background glass.
WHITE_LEVEL = 220


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _mpp_from_properties(props: Any, prefix: str) -> tuple[float | None, str]:
    """Level-0 microns per pixel from OpenSlide or tiffslide properties, and where it came from."""
    mx = _float(props.get(f"{prefix}.mpp-x"))
    my = _float(props.get(f"{prefix}.mpp-y"))
    if mx and my and _plausible((mx + my) / 2):
        return (mx + my) / 2, "metadata mpp"
    if mx and _plausible(mx):
        return mx, "metadata mpp"
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    xres = _float(props.get("tiff.XResolution"))
    if xres and unit in ("centimeter", "3"):
        mpp = 1e4 / xres
        if _plausible(mpp):
            return mpp, "TIFF resolution"
    power = _float(props.get(f"{prefix}.objective-power"))
    if power:
        # The usual convention: 10x objective ~ 1 um/px, so 20x ~ 0.5, 40x ~ 0.25.
        return 10.0 / power, "objective power"
    return None, ""


def _rgba_to_rgb(arr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Drop alpha; fully transparent pixels (outside scanned area) become white glass."""
    rgb = np.ascontiguousarray(arr[..., :3])
    if arr.shape[-1] == 4:
        rgb[arr[..., 3] == 0] = 255
    return rgb


class Slide:
    """An open slide or image: level-0 size, resolution, pyramid levels and region reads.

    Use :func:`open_slide` to make one. Sizes are ``(width, height)``; regions are RGB ``uint8``.

    Attributes
    ----------
    path : Path
    dimensions : (int, int)
        Level-0 width and height.
    mpp : float
        Level-0 microns per pixel.
    mpp_source : str
        Where the resolution came from ("metadata mpp", "objective power", "user", ...).
    backend : {'openslide', 'tiffslide', 'pil'}
    level_dimensions : tuple of (int, int)
    level_downsamples : tuple of float
    """

    def __init__(
        self,
        path: Path,
        backend: str,
        handle: Any,
        mpp: float,
        mpp_source: str,
        level_dimensions: tuple[tuple[int, int], ...],
        level_downsamples: tuple[float, ...],
        properties: dict[str, str] | None = None,
        read_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.path = path
        # What the reader raises for undecodable data (OpenSlideError, imagecodecs' RuntimeErrors,
        # tifffile's ValueErrors, truncated-file OSErrors); programming errors still propagate.
        self._read_errors: tuple[type[BaseException], ...] = (OSError, *read_errors)
        self.backend = backend
        self._handle = handle
        self.mpp = float(mpp)
        self.mpp_source = mpp_source
        self.level_dimensions = level_dimensions
        self.level_downsamples = level_downsamples
        self.properties = properties or {}

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {w}x{h}, mpp={self.mpp:.4g}, backend={self.backend!r})"

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level that is still at least as sharp as ``downsample`` asks.

        Reading from a level finer than needed and shrinking keeps the result right; a slight
        tolerance admits levels whose recorded downsample is off by rounding (3.9999 for 4).
        """
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = i
        return best

    def read_region_array(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> npt.NDArray[np.uint8]:
        """Read a region as an RGB array.

        Parameters
        ----------
        location : (int, int)
            Level-0 top-left ``(x, y)``.
        level : int
            Pyramid level to read from.
        size : (int, int)
            ``(width, height)`` in pixels of that level.

        Returns
        -------
        ndarray of shape (height, width, 3), uint8
            Areas outside the slide are white.

        Raises
        ------
        CorruptFileError
            The slide's data cannot be decoded (damaged tiles).
        """
        if self._handle is None:
            raise InvalidInputError(f"slide {self.path} is closed")
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise InvalidInputError(f"region size must be positive, got {size}")
        try:
            if self.backend == "openslide":
                img = self._handle.read_region((x, y), level, (w, h))
                return _rgba_to_rgb(np.asarray(img))
            if self.backend == "tiffslide":
                arr = self._handle.read_region((x, y), level, (w, h), as_array=True)
                return _rgba_to_rgb(np.asarray(arr)) if arr.shape[-1] == 4 else np.asarray(arr)
            return self._read_plain(x, y, w, h)
        except self._read_errors as err:
            raise CorruptFileError(
                f"cannot read region at ({x}, {y}) level {level} size {w}x{h} of {self.path}: "
                f"{type(err).__name__}: {err}; the file may have corrupt tiles"
            ) from err

    def _read_plain(self, x: int, y: int, w: int, h: int) -> npt.NDArray[np.uint8]:
        full: npt.NDArray[np.uint8] = self._handle
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        H, W = full.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = full[y0:y1, x0:x1]
        return out

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """Like :meth:`read_region_array` but a PIL RGB image (OpenSlide's signature)."""
        return Image.fromarray(self.read_region_array(location, level, size), mode="RGB")

    def read_patch(self, x: int, y: int, size_level0: int, out_size: int) -> npt.NDArray[np.uint8]:
        """A square patch at level-0 ``(x, y)`` with side ``size_level0``, resized to ``out_size``.

        Reads from the best pyramid level for the downsample and resizes (area-averaging), so a
        40x slide patched at 20x is right.

        Returns
        -------
        ndarray of shape (out_size, out_size, 3), uint8
        """
        level = self.best_level_for_downsample(size_level0 / out_size)
        ds = self.level_downsamples[level]
        side = max(1, int(math.ceil(size_level0 / ds - 1e-6)))
        arr = self.read_region_array((x, y), level, (side, side))
        if side != out_size:
            img = Image.fromarray(arr).resize((out_size, out_size), Image.Resampling.BILINEAR)
            arr = np.asarray(img)
        return arr

    def get_thumbnail(self, max_size: int) -> Image.Image:
        """The whole slide, shrunk so that its longer side is at most ``max_size`` pixels (RGB).

        Reads the coarsest sufficient pyramid level in horizontal strips, so a slide without small
        levels (one huge level) needs memory for one strip, not the whole level.
        """
        w, h = self.dimensions
        scale = min(1.0, max_size / max(w, h))
        tw, th = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        if self.backend == "pil":
            img = Image.fromarray(self._handle)
            return img.resize((tw, th), Image.Resampling.BOX) if (tw, th) != (w, h) else img
        level = self.best_level_for_downsample(max(w / tw, h / th))
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        if (lw, lh) == (tw, th):
            return Image.fromarray(self.read_region_array((0, 0), level, (lw, lh)))
        out = np.empty((th, tw, 3), dtype=np.uint8)
        # Strips of about _STRIP_PIXELS level pixels, each a whole number of thumbnail rows.
        rows_per_strip = max(1, int(_STRIP_PIXELS / max(lw, 1) * th / lh))
        for r0 in range(0, th, rows_per_strip):
            r1 = min(th, r0 + rows_per_strip)
            y0 = int(round(r0 * lh / th))
            y1 = max(y0 + 1, int(round(r1 * lh / th)))
            strip = self.read_region_array((0, int(round(y0 * ds))), level, (lw, y1 - y0))
            img = Image.fromarray(strip).resize((tw, r1 - r0), Image.Resampling.BOX)
            out[r0:r1] = np.asarray(img)
        return Image.fromarray(out)

    def close(self) -> None:
        if self._handle is not None and self.backend != "pil":
            self._handle.close()
        self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _resolve_mpp(
    path: Path, found: float | None, source: str, given: float | None
) -> tuple[float, str]:
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise InvalidInputError(
                f"slide mpp must be a positive number of microns per pixel, got {given!r}"
            )
        if found is not None and abs(found - given) / found > 0.05:
            log.warning(
                "%s: using the given %.4g um/px instead of %.4g from its %s",
                path,
                given,
                found,
                source,
            )
        return float(given), "user"
    if found is None:
        raise UnknownResolutionError(
            f"the resolution of {path} is unknown (no microns-per-pixel or objective power in its "
            "metadata); pass it with --slide-mpp (e.g. --slide-mpp 0.5 for a 20x scan)"
        )
    return found, source


def _open_openslide(path: Path, mpp: float | None) -> Slide | None:
    try:
        import openslide
    except ImportError as err:  # pragma: no cover - the embed extra brings it
        log.debug("OpenSlide unavailable: %s", err)
        return None
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        return None
    except openslide.OpenSlideError as err:
        raise CorruptFileError(
            f"{path} looks like a slide but OpenSlide cannot open it ({err}); "
            "the file may be damaged"
        ) from err
    props = dict(handle.properties)
    try:
        found, source = _mpp_from_properties(props, "openslide")
        value, source = _resolve_mpp(path, found, source, mpp)
    except BaseException:
        handle.close()
        raise
    return Slide(
        path,
        "openslide",
        handle,
        value,
        source,
        tuple((int(w), int(h)) for w, h in handle.level_dimensions),
        tuple(float(d) for d in handle.level_downsamples),
        props,
        read_errors=(openslide.OpenSlideError,),
    )


def _open_tiffslide(path: Path, mpp: float | None) -> Slide | None:
    try:
        import tiffslide
    except ImportError as err:  # pragma: no cover
        log.debug("tiffslide unavailable: %s", err)
        return None
    try:
        handle = tiffslide.TiffSlide(str(path))
    except Exception as err:
        log.debug("tiffslide cannot open %s: %s", path, err)
        return None
    try:
        props = {k: v for k, v in handle.properties.items() if v is not None}
        found, source = _mpp_from_properties(props, "tiffslide")
        value, source = _resolve_mpp(path, found, source, mpp)
        dims = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        downs = tuple(float(d) for d in handle.level_downsamples)
    except HistosicError:
        handle.close()
        raise
    except Exception as err:  # a truncated or damaged TIFF: tiffslide fails anywhere in here
        handle.close()
        raise CorruptFileError(
            f"slide {path} is damaged or truncated: its TIFF structure cannot be read "
            f"({type(err).__name__}: {' '.join(str(err).split())[:120]}); copy the file again"
        ) from err
    except BaseException:
        handle.close()
        raise
    return Slide(
        path,
        "tiffslide",
        handle,
        value,
        source,
        dims,
        downs,
        {k: str(v) for k, v in props.items()},
        # tifffile raises ValueError/KeyError for bad structure, imagecodecs RuntimeErrors.
        read_errors=(ValueError, KeyError, IndexError, RuntimeError),
    )


def _open_plain(path: Path, mpp: float | None) -> Slide:
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > _MAX_PLAIN_PIXELS:
                raise InvalidInputError(
                    f"{path} is a {w}x{h} plain image, too big to load whole; convert it to a "
                    "pyramidal TIFF (e.g. with vips tiffsave --tile --pyramid)"
                )
            value, source = _resolve_mpp(path, None, "", mpp)
            limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # bounded above; whole-slide JPEGs are big on purpose
            try:
                arr = np.asarray(img.convert("RGB"))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except UnidentifiedImageError as err:
        raise CorruptFileError(
            f"{path} is not a slide or image that OpenSlide, tiffslide or Pillow can read; "
            "give a whole-slide file (SVS, NDPI, MRXS, TIFF, ...) or a JPEG/PNG image"
        ) from err
    except OSError as err:
        raise CorruptFileError(f"{path} is a damaged or truncated image ({err})") from err
    return Slide(path, "pil", arr, value, source, ((w, h),), (1.0,), {}, read_errors=(ValueError,))


def open_slide(
    path: str | os.PathLike[str], *, mpp: float | None = None, backend: str | None = None
) -> Slide:
    """Open a whole-slide image or a plain image.

    Parameters
    ----------
    path : path-like
    mpp : float, optional
        Level-0 microns per pixel. Overrides the slide's metadata; required for plain images
        (JPEG, PNG, non-pyramidal TIFF without resolution).
    backend : {'openslide', 'tiffslide', 'pil'}, optional
        Use only this reader; by default the first of them that accepts the file.

    Returns
    -------
    Slide
        Close it (or use ``with``) when done.

    Raises
    ------
    SlideNotFoundError
        ``path`` does not exist.
    CorruptFileError
        Not an image, or a damaged one.
    UnknownResolutionError
        The resolution is neither in the metadata nor given (``--slide-mpp``).
    """
    p = Path(path)
    if not p.exists():
        raise SlideNotFoundError(f"slide {p} does not exist; check the path")
    if p.is_dir():
        raise InvalidInputError(f"slide {p} is a directory; give a slide file")
    if p.stat().st_size == 0:
        raise CorruptFileError(f"slide {p} is an empty file")
    if backend is not None:
        openers = {"openslide": _open_openslide, "tiffslide": _open_tiffslide}
        if backend == "pil":
            return _open_plain(p, mpp)
        if backend not in openers:
            raise InvalidInputError(
                f"unknown slide reader {backend!r}; use openslide, tiffslide or pil"
            )
        slide = openers[backend](p, mpp)
        if slide is None:
            raise CorruptFileError(f"{backend} cannot open {p}; try another reader")
        return slide
    if p.suffix.lower() not in PLAIN_IMAGE_SUFFIXES:
        for opener in (_open_openslide, _open_tiffslide):
            slide = opener(p, mpp)
            if slide is not None:
                log.debug("opened %r", slide)
                return slide
    return _open_plain(p, mpp)


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a thumbnail.

    Parameters
    ----------
    method : {'otsu', 'saturation', 'all'}, default 'otsu'
        'otsu': Otsu's threshold on HSV saturation, clipped to
        ``[min_saturation, max_saturation]``;
        'saturation': the fixed threshold ``min_saturation``; 'all': every pixel is tissue.
    min_saturation : float, default 0.05
        Saturation floor in [0, 1]: grey glass and a blank slide stay background.
    max_saturation : float, default 0.25
        Ceiling of the Otsu threshold. Where tissue covers almost the whole slide, Otsu splits the
        tissue itself into pale and dark halves; stained tissue is well above this ceiling (Otsu
        gives 0.23-0.24 on the CMU-1 and DigestPath images, whose glass is below 0.05).
    closing_radius : int, default 2
        Radius (thumbnail pixels) of the closing that joins tissue fragments.
    min_object_fraction : float, default 0.0002
        Tissue islands smaller than this fraction of the thumbnail are removed (dust).
    max_hole_fraction : float, default 0.001
        Holes smaller than this fraction of the thumbnail are filled.
    thumbnail_size : int, default 1024
        Longest side of the thumbnail the mask is computed on.
    """

    method: str = "otsu"
    min_saturation: float = 0.05
    max_saturation: float = 0.25
    closing_radius: int = 2
    min_object_fraction: float = 0.0002
    max_hole_fraction: float = 0.001
    thumbnail_size: int = 1024

    @property
    def name(self) -> str:
        if self.method == "all":
            return "all"
        if self.method == "saturation":
            return f"saturation>{self.min_saturation:g}+cleanup"
        return f"otsu-saturation[{self.min_saturation:g},{self.max_saturation:g}]+cleanup"

    def validate(self) -> TissueConfig:
        if self.method not in ("otsu", "saturation", "all"):
            raise InvalidInputError(
                f"unknown tissue method {self.method!r}; use 'otsu', 'saturation' or 'all'"
            )
        if not 0 <= self.min_saturation <= self.max_saturation <= 1:
            raise InvalidInputError(
                "saturation bounds must satisfy 0 <= min <= max <= 1, got "
                f"{self.min_saturation} and {self.max_saturation}"
            )
        if self.thumbnail_size < 16:
            raise InvalidInputError(f"thumbnail_size must be >= 16, got {self.thumbnail_size}")
        return self


def detect_tissue(
    thumbnail: Image.Image | npt.NDArray[np.uint8],
    config: TissueConfig = TissueConfig(),
) -> npt.NDArray[np.bool_]:
    """Tissue mask of an RGB thumbnail.

    Stained tissue is coloured while glass is grey or white, so saturation separates them better
    than brightness (which confuses pale stroma with glass).

    Parameters
    ----------
    thumbnail : PIL image or ndarray of shape (h, w, 3), uint8
    config : TissueConfig

    Returns
    -------
    ndarray of shape (h, w), bool
    """
    from skimage import filters, morphology

    config.validate()
    rgb = np.asarray(thumbnail.convert("RGB") if isinstance(thumbnail, Image.Image) else thumbnail)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise InvalidInputError(f"thumbnail must be (h, w, 3) RGB, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if config.method == "all":
        return np.ones(rgb.shape[:2], dtype=bool)
    # HSV saturation, (max - min) / max, without computing hue. Channel-wise maximum/minimum of
    # three planes: a reduction over a length-3 last axis is several times slower in NumPy.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cmax_u8 = np.maximum(np.maximum(r, g), b)
    cmax = cmax_u8.astype(np.float32)
    cmin = np.minimum(np.minimum(r, g), b).astype(np.float32)
    sat = np.divide(cmax - cmin, cmax, out=np.zeros_like(cmax), where=cmax_u8 > 0)
    threshold = config.min_saturation
    if config.method == "otsu" and float(sat.max()) > float(sat.min()):
        otsu = float(filters.threshold_otsu(sat))  # type: ignore[no-untyped-call]
        threshold = min(max(threshold, otsu), config.max_saturation)
    mask = sat > threshold
    # Pure black (scanner borders, pen) is saturated by rounding only; not tissue.
    mask &= cmax_u8 > 25
    area = mask.size
    if config.closing_radius > 0:
        disk = morphology.disk(config.closing_radius)  # type: ignore[no-untyped-call]
        mask = morphology.closing(mask, disk).astype(bool)
    min_obj = int(config.min_object_fraction * area)
    if min_obj > 1:
        mask = _small_cleanup(morphology.remove_small_objects, mask, min_obj)
    max_hole = int(config.max_hole_fraction * area)
    if max_hole > 1:
        mask = _small_cleanup(morphology.remove_small_holes, mask, max_hole)
    return np.asarray(mask, dtype=bool)


def _small_cleanup(func: Any, mask: npt.NDArray[np.bool_], size: int) -> npt.NDArray[np.bool_]:
    # scikit-image 0.26 renamed the size argument (min_size/area_threshold -> max_size).
    try:
        return np.asarray(func(mask, max_size=size), dtype=bool)
    except TypeError:
        return np.asarray(func(mask, size), dtype=bool)


def white_fraction(
    patches: npt.NDArray[np.uint8], level: int = WHITE_LEVEL
) -> npt.NDArray[np.float32]:
    """Fraction of near-white (background) pixels per patch.

    Parameters
    ----------
    patches : ndarray of shape (n, h, w, 3), uint8
    level : int
        A pixel is white when all its channels are at least this bright.

    Returns
    -------
    ndarray of shape (n,), float32
    """
    arr = np.asarray(patches)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InvalidInputError(f"patches must be (n, h, w, 3), got {arr.shape}")
    # Three plane comparisons are ~10x faster than a min over the short channel axis.
    white = (arr[..., 0] >= level) & (arr[..., 1] >= level) & (arr[..., 2] >= level)
    n = arr.shape[0]
    counts = np.count_nonzero(white.reshape(n, -1), axis=1)
    out: npt.NDArray[np.float32] = (counts / max(white[0].size, 1) if n else counts).astype(
        np.float32
    )
    return out
