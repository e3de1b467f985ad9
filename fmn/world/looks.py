"""Characters and artists' styles read from pixels: the pixel check's second half (pixels.py reads the rest).

The judge reads characters and styles too, and an audit of it needs labels it did not make. A character is a
fixed figure of fixed colours (render.py `_identity`): Mimo a yellow disc with two dark eyes, Lumina a pink
body with two dark eyes, Zubrik a grey head with red eyes, Tobble a navy body with a white belly below. An
artist leaves marks on whatever it draws (render.py `_stylise`): Vellor a dark outline, Quimby a pale tint
with dots, Zaranth a whitened core in a glow that fades outward, Brusk diagonal stripes. Each is read from the
one object that `pixels.scan` finds, by colour shares and simple geometry, no learned weights; every threshold
was set on renders and checked by eye on the model's images. A plain shape (pixels.py reads its shape) has no
character and the style "plain". Each read abstains (None) where the pixels do not settle it: a wrong read is
worse than none.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .pixels import LUMA, Scan, components, erode, far_from_backdrop, filled, read, scan
from .render import NIGHT_DIM

__all__ = ["LookRead", "read_looks"]

# The object as drawn by day (night dims it to NIGHT_DIM); its edge band (2 pixels) and its core (3 in).
BAND, CORE, MIN_CORE = 2, 3, 10
DARK = 0.45  # a mark is darker than this share of the core's luminance (eyes, a mouth, an outline)
SHADOW = 0.6  # a plain shape: a tenth of the pixels just outside it darker than this share of it or the
# backdrop (the darker) is an outline
FLAT = 0.8  # ... and its core flat: its 5th percentile of luminance this share of the median at least (the
# model draws Mimo's face faint at night)
# Characters: the body's hue (degrees), saturation and value ranges, and the marks inside it.
MIMO_HUE, MIMO_SATURATION, MIMO_VALUE = (25, 60), 0.5, 0.55  # yellow (the model draws it toward orange)
LUMINA_HUE, LUMINA_SATURATION, LUMINA_VALUE = (290, 350), (0.15, 0.55), 0.6  # pink (the model: toward lavender)
EYE_ROW, EYE_APART, EYE_HIGH, EYE_PIXELS = 0.15, 0.2, 0.65, 2  # two marks level, apart, in the upper part
GREY_SATURATION, GREY_VALUE, RED_SHARE = 0.2, (0.35, 0.75), 0.02  # Zubrik: a grey body with red inside
NAVY_SHARE, WHITE_SHARE, BELLY_BELOW = 0.2, 0.08, 0.05  # Tobble: navy, and white whose centre lies lower
# Styles.
STRIPES, STRIPES_OVER_CROSS, STRIPES_OVER_ROWS = 0.35, 2.0, 1.2  # Brusk: diagonal luminance wave (share of std)
OUTLINE_DARK, OUTLINE_LUM, OUTLINE_NAVY, OUTLINE_CHROMA = 0.5, 0.5, 0.1, 45.0  # Vellor: the edge band dark and
# near black (a small spread of R, G, B), not a navy body
FADE, CRISP, HALO_DARK = 0.5, 0.7, 0.2  # Zaranth: an edge that fades (`_fade`); Quimby's is crisp; no outline
PALE_SATURATION, PALE_VALUE = 0.45, 0.7  # Zaranth's and Quimby's pale core
DOT_FAR, DOT_PIXELS, DOTS, DOT_SHARE = 40.0, 12, 5, (0.2, 0.8)  # Quimby: small spots off the tint, many


@dataclass(frozen=True)
class LookRead:
    """What the pixels decide about the one object's character and style; None where they do not."""

    character: str | None  # an IDENTITIES key, or "none": a plain shape, no character
    style: str | None  # a STYLE_CLASSES key ("plain": a plain shape)


@dataclass(frozen=True)
class _Object:
    """The object's pixels by day: its region (holes filled), edge band, core, and the core's colour."""

    rgb: np.ndarray  # (64, 64, 3) floats, undimmed at night
    lum: np.ndarray  # (64, 64)
    region: np.ndarray  # (64, 64) bool
    band: np.ndarray
    core: np.ndarray
    hsv: tuple[float, float, float]  # the core's median colour: hue (degrees), saturation, value


def read_looks(image: Image.Image | np.ndarray | Scan) -> LookRead:
    """The character and style of one image (PIL, uint8 (64, 64, 3), or its scan)."""
    s = image if isinstance(image, Scan) else scan(image)
    if s.mask is None or s.night is None:
        return LookRead(None, None)
    obj = _object(s)
    if obj is None:
        return LookRead(None, None)
    character, style = _character(obj), _style(s, obj)
    if read(s).shape is not None:  # a plain shape: any mark read on it is a wrong one, so trust neither
        clean = character is None and style is None and not _shadowed(s) and _flat(obj)
        return LookRead("none", "plain") if clean else LookRead(None, None)
    return LookRead(character, style)


def _shadowed(s: Scan) -> bool:
    """Pixels just outside the object darker than both it and the backdrop: an outline its mask left out (at
    night an outline lies near the backdrop's colour)."""
    ring = _dilate_n(s.mask, 2) & ~s.mask
    floor = min(float(s.backdrop @ LUMA), float(np.median(s.rgb[s.mask] @ LUMA)))
    dark_grass = s.night and s.background == "grass"  # its blades are as dark as an outline: never sure
    return dark_grass or float(np.percentile(s.rgb[ring] @ LUMA, 10)) < SHADOW * floor


def _erode_n(mask: np.ndarray, n: int) -> np.ndarray:
    for _ in range(n):
        mask = erode(mask)
    return mask


def _dilate_n(mask: np.ndarray, n: int) -> np.ndarray:
    return ~_erode_n(~mask, n)


def _hsv(colours: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in 0..255 -> (..., 3) hue in degrees, saturation, value."""
    flat = np.clip(colours.reshape(-1, 3), 0, 255) / 255
    return np.array([colorsys.rgb_to_hsv(*c) for c in flat]).reshape(colours.shape) * [360, 1, 1]


def _object(s: Scan) -> _Object | None:
    rgb = s.rgb / (NIGHT_DIM if s.night else 1.0)
    region = filled(s.mask)
    core = _erode_n(region, CORE)
    if core.sum() < MIN_CORE:
        return None
    lum = rgb @ LUMA
    hsv = tuple(_hsv(np.median(rgb[core], 0))[:3].tolist())
    return _Object(rgb, lum, region, region & ~_erode_n(region, BAND), core, hsv)


def _character(obj: _Object) -> str | None:
    """The one character whose colours and marks the object has, or None."""
    found = [name for name, test in (("Mimo", _mimo), ("Lumina", _lumina), ("Zubrik", _zubrik),
                                     ("Tobble", _tobble)) if test(obj)]
    return found[0] if len(found) == 1 else None


def _flat(obj: _Object) -> bool:
    """No faint marks in the core: a face drawn faint is not a plain shape."""
    return float(np.percentile(obj.lum[obj.core], 5)) >= FLAT * float(np.median(obj.lum[obj.core]))


def _eyes(obj: _Object) -> bool:
    """Two dark marks inside the body's core, level with each other, apart, in its upper part."""
    labels, sizes = components(obj.core & (obj.lum < DARK * np.median(obj.lum[obj.core])))
    ys, xs = np.nonzero(obj.region)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    centres = [np.argwhere(labels == n).mean(0) for n, size in enumerate(sizes, 1) if size >= EYE_PIXELS]
    return any(abs(y1 - y2) <= EYE_ROW * height and abs(x1 - x2) >= EYE_APART * width
               and max(y1, y2) <= ys.min() + EYE_HIGH * height
               for i, (y1, x1) in enumerate(centres) for y2, x2 in centres[i + 1:])


def _within(hue: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= hue <= bounds[1]


def _mimo(obj: _Object) -> bool:
    hue, saturation, value = obj.hsv
    return _within(hue, MIMO_HUE) and saturation >= MIMO_SATURATION and value >= MIMO_VALUE and _eyes(obj)


def _lumina(obj: _Object) -> bool:
    hue, saturation, value = obj.hsv
    return _within(hue, LUMINA_HUE) and _within(saturation, LUMINA_SATURATION) and value >= LUMINA_VALUE \
        and _eyes(obj) and _navy(obj).mean() < OUTLINE_NAVY


def _zubrik(obj: _Object) -> bool:
    _, saturation, value = obj.hsv
    hsv = _hsv(obj.rgb[obj.region])  # (pixels, 3)
    red = ((hsv[:, 0] < 20) | (hsv[:, 0] > 340)) & (hsv[:, 1] > 0.45) & (hsv[:, 2] > 0.45)
    return saturation <= GREY_SATURATION and _within(value, GREY_VALUE) and red.mean() >= RED_SHARE


def _tobble(obj: _Object) -> bool:
    hsv = _hsv(obj.rgb)  # (64, 64, 3)
    navy = obj.region & _within_all(hsv[..., 0], (210, 260)) & (hsv[..., 1] > 0.4) & _within_all(hsv[..., 2],
                                                                                                  (0.15, 0.55))
    white = obj.region & (hsv[..., 1] < 0.2) & (hsv[..., 2] > 0.8)
    area = obj.region.sum()
    if navy.sum() < NAVY_SHARE * area or white.sum() < WHITE_SHARE * area:
        return False
    height = np.ptp(np.nonzero(obj.region)[0]) + 1
    return np.nonzero(white)[0].mean() - np.nonzero(navy)[0].mean() >= BELLY_BELOW * height


def _navy(obj: _Object) -> np.ndarray:
    """Per pixel of the object, whether it has Tobble's navy."""
    hsv = _hsv(obj.rgb[obj.region])
    return _within_all(hsv[:, 0], (210, 260)) & (hsv[:, 1] > 0.4) & _within_all(hsv[:, 2], (0.15, 0.55))


def _within_all(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (values >= bounds[0]) & (values <= bounds[1])


def _style(s: Scan, obj: _Object) -> str | None:
    """The one artist whose marks the object shows, or None (a plain shape is read in read_looks)."""
    found = [name for name, test in (("Brusk", _brusk), ("Vellor", _vellor), ("Zaranth", _zaranth),
                                     ("Quimby", _quimby)) if test(s, obj)]
    return found[0] if len(found) == 1 else None


def _wave(values: np.ndarray, coordinate: np.ndarray, periods=(5, 6, 7, 8)) -> float:
    """The strongest periodic component of values along a coordinate, as a share of their spread."""
    centred = values - values.mean()
    return max(abs(np.mean(centred * np.exp(2j * np.pi * coordinate / p))) for p in periods) / (centred.std() + 1e-6)


def _brusk(s: Scan, obj: _Object) -> bool:
    ys, xs = np.nonzero(obj.core)
    lum = obj.lum[obj.core]
    diagonal, cross, rows = _wave(lum, xs + ys), _wave(lum, xs - ys), _wave(lum, ys, (4, 5, 6, 7, 8))
    return diagonal >= STRIPES and diagonal >= STRIPES_OVER_CROSS * cross and diagonal >= STRIPES_OVER_ROWS * rows


def _vellor(s: Scan, obj: _Object) -> bool:
    core_lum = np.median(obj.lum[obj.core])
    dark = obj.band & (obj.lum < DARK * core_lum)
    navy = _navy(obj)
    chroma = np.ptp(obj.rgb[dark], axis=1) if dark.any() else np.array([255.0])  # black: R, G and B alike
    return dark.sum() >= OUTLINE_DARK * obj.band.sum() and np.median(obj.lum[obj.band]) <= OUTLINE_LUM * core_lum \
        and navy.mean() < OUTLINE_NAVY and np.median(chroma) <= OUTLINE_CHROMA and not _pale(obj)


def _fade(s: Scan, obj: _Object) -> float:
    """How far from the backdrop the object's outermost pixels are, as a share of the pixels two further in:
    about 0.85 for a crisp edge, lower where a glow fades outward."""
    far = far_from_backdrop(s.rgb, s.backdrop, s.background, s.night)
    outer = obj.region & ~_erode_n(obj.region, 1)
    inner = _erode_n(obj.region, 2) & ~_erode_n(obj.region, 3)
    return float(far[outer].mean() / max(far[inner].mean(), 1.0))


def _pale(obj: _Object) -> bool:
    return obj.hsv[1] <= PALE_SATURATION and obj.hsv[2] >= PALE_VALUE


def _zaranth(s: Scan, obj: _Object) -> bool:
    dark = obj.lum[obj.band] < DARK * np.median(obj.lum[obj.core])
    return _pale(obj) and _fade(s, obj) <= FADE and dark.mean() < HALO_DARK


def _quimby(s: Scan, obj: _Object) -> bool:
    tint = np.median(obj.rgb[obj.core], 0)
    spots = obj.core & (np.linalg.norm(obj.rgb - tint, axis=-1) > DOT_FAR)
    _, sizes = components(spots)
    dots = sum(1 for size in sizes if size <= DOT_PIXELS)
    share = spots.sum() / obj.core.sum()
    return _pale(obj) and dots >= DOTS and _within(share, DOT_SHARE) and _fade(s, obj) >= CRISP
