"""QuPath class colours and classification objects, computed as QuPath itself computes them.

After qupath/qupath, qupath-core (commit e7662d89, QuPath 0.6 line; the same in 0.5):

- ``qupath/lib/objects/classes/PathClass.java``: colours of the built-in classes
  (``StandardPathClasses``, ``COLOR_POSITIVE`` etc., ``getDefaultColor``) and, for other names, a
  colour drawn from ``java.util.Random`` seeded with the name's ``String.hashCode`` -- ported here
  so a new class gets the colour QuPath itself would give it.
- ``qupath/lib/io/GsonTools.java`` ``PathClassTypeAdapter``: a classification object needs
  ``name`` (or ``names`` for a derived class such as ``histosic: suggested seed``; the delimiter
  ``PathClass.DELIMITER`` is ``":"``) *and* ``color`` as ``[r, g, b]``, or QuPath's import fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from histosic.errors import InvalidInputError

__all__ = [
    "QUPATH_CLASS_COLORS",
    "SUGGESTED_SEED_CLASS",
    "class_color",
    "classification",
    "split_class_names",
]

#: Class of suggested seed points; QuPath splits it at ":" into the derived class
#: ``["histosic", "suggested seed"]`` and writes it as ``names`` (GsonTools.PathClassTypeAdapter).
SUGGESTED_SEED_CLASS = "histosic: suggested seed"

# PathClass.java: StandardPathClasses (explicit colours) and getDefaultColor for the top-level
# "Positive", "Negative", "1+", "2+", "3+" (base colour scaled by 1.25, ColorTools.makeScaledRGB).
QUPATH_CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Image": (128, 128, 128),
    "Positive": (250, 62, 62),
    "Negative": (112, 112, 225),
    "1+": (255, 255, 0),
    "2+": (255, 187, 62),
    "3+": (250, 62, 62),
}
# PathClass.java: COLOR_* constants, used unscaled for "Tumor: Positive" etc. and scaled for
# derived classes of other parents.
_INTENSITY_BASE = {
    "1+": ((255, 215, 0), 0.9),
    "2+": ((225, 150, 50), 0.6),
    "3+": ((200, 50, 50), 0.4),
    "Positive": ((200, 50, 50), 0.75),
    "Negative": ((90, 90, 180), 1.25),
}
_DELIMITER = ":"  # PathClass.DELIMITER


def _java_string_hash(s: str) -> int:
    """Java's ``String.hashCode`` (UTF-16 code units, 32-bit signed overflow)."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


class _JavaRandom:
    """The 48-bit linear congruential generator of ``java.util.Random`` (enough for nextInt)."""

    _MULT = 0x5DEECE66D
    _MASK = (1 << 48) - 1

    def __init__(self, seed: int) -> None:
        self._seed = (seed ^ self._MULT) & self._MASK

    def _next(self, bits: int) -> int:
        self._seed = (self._seed * self._MULT + 0xB) & self._MASK
        r = self._seed >> (48 - bits)
        return r - (1 << 32) if r >= 1 << 31 else r

    def next_int(self, bound: int) -> int:
        if bound <= 0:
            raise InvalidInputError(f"java.util.Random.nextInt needs a positive bound, got {bound}")
        if bound & (bound - 1) == 0:  # a power of two
            return (bound * self._next(31)) >> 31
        while True:
            bits = self._next(31)
            val = bits % bound
            if bits - val + (bound - 1) < (1 << 31):
                return val


def _random_class_color(cache_name: str) -> tuple[int, int, int]:
    # PathClass.getDefaultColor: Random(cacheName.hashCode()), rejecting very dark colours.
    rnd = _JavaRandom(_java_string_hash(cache_name))
    r = g = b = 0
    while r < 40 and g < 40 and b < 40:
        r, g, b = rnd.next_int(256), rnd.next_int(256), rnd.next_int(256)
    return (r, g, b)


def _scaled(rgb: tuple[int, int, int], scale: float) -> tuple[int, int, int]:
    # ColorTools.makeScaledRGB: (int) Math.min(255, c * scale)
    return (
        int(min(255.0, rgb[0] * scale)),
        int(min(255.0, rgb[1] * scale)),
        int(min(255.0, rgb[2] * scale)),
    )


def split_class_names(name: str | Sequence[str]) -> list[str]:
    """A class name as QuPath's list of names: split at ``":"``, stripped, empty parts dropped."""
    parts = name.split(_DELIMITER) if isinstance(name, str) else list(name)
    return [p.strip() for p in parts if p.strip()]


def class_color(name: str | Sequence[str]) -> tuple[int, int, int]:
    """The colour QuPath gives a class when it first meets it, as ``(r, g, b)``.

    Parameters
    ----------
    name : str or sequence of str
        A class name (``"Tumor"``), a derived class as QuPath's string (``"Tumor: Positive"``) or
        as its list of names.

    Built-in classes get QuPath's default colours; other names get the colour QuPath derives from
    the name's hash, so the same name always has the same colour, here and in QuPath.
    """
    names = split_class_names(name)
    if not names:
        return (64, 64, 64)  # PathClass.DEFAULT_COLOR
    if len(names) == 1:
        known = QUPATH_CLASS_COLORS.get(names[0])
        return known if known is not None else _random_class_color(names[0])
    last = names[-1]
    if last in _INTENSITY_BASE:
        base, scale = _INTENSITY_BASE[last]
        if len(names) == 2 and names[0] == "Tumor":
            return base
        return _scaled(class_color(names[:-1]), scale)
    return _random_class_color("\n".join(names))  # PathClass.CACHE_DELIMITER


def classification(name: str | Sequence[str]) -> dict[str, Any]:
    """A QuPath classification object: ``{"name": ..., "color": [r, g, b]}``.

    Derived classes (``"histosic: suggested seed"``) are written as ``{"names": [...], ...}``
    exactly as ``GsonTools.PathClassTypeAdapter.write`` does. ``color`` is required by QuPath's
    reader.
    """
    names = split_class_names(name)
    if not names:
        raise InvalidInputError(f"class name {name!r} is empty")
    color = list(class_color(names))
    if len(names) == 1:
        return {"name": names[0], "color": color}
    return {"names": names, "color": color}
