"""An independent pixel check of a 64x64 shapes-world image: what colour arithmetic and geometry decide.

The judge (judge.py) is a CNN that only ever saw renders; to audit it on the model's own images we need
labels it did not make. This module reads the background and night from the image's border, finds the one
object as the pixels far from that backdrop, and reads its shape from the mask's geometry and its colour
from its median colour (nearest in RGB and in hue). No learned weights: every threshold below was set on
renders (`render.render`) and checked by eye on model images. Each field abstains (None) when the pixels
do not settle it, e.g. two objects, none, an object that touches the edge, or one that is not drawn plain
(an artist's outline, dots, stripes or glow, a character's eyes): abstaining is fine, a wrong read is not.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .render import BACKGROUND_RGB, MOON_RGB, NIGHT_DIM, NIGHT_MIX, NIGHT_RGB, STAR_RGB, TEXTURE_RGB
from .scenes import COLOURS

__all__ = ["PixelRead", "Scan", "read", "scan", "components", "erode", "far_from_backdrop", "filled", "LUMA"]

# Backdrop, read from the border (3 pixels wide): day backgrounds have luminance >= ~115, night ones <= ~75.
BORDER = 3
NIGHT_BELOW, DAY_ABOVE = 90.0, 105.0  # luminance of the border's median; in between: not sure
BACKDROP_NEAR = 60.0  # and that median this near a background by day or at night (RGB distance), else not sure
BACKGROUND_NEAR = 45.0  # the de-blended border colour lies this close to its background (RGB distance) ...
BACKGROUND_MARGIN = 30.0  # ... and this much closer than to the next one (at night, 8 in the image's own units)
BORDER_UNIFORM = 0.6  # share of border pixels near its median: below it (noise, an object on the edge) abstain
# The object: pixels far from the backdrop; specks and the moon dropped; exactly one clear component kept.
FAR = 40.0  # first pass; the second cuts halfway between the backdrop and the object's colour
SPECK = 12  # components smaller than this many pixels are grass, grains, stars or noise
MIN_OBJECT = 80  # the smallest shape of the world covers ~150 pixels
SECOND_OBJECT = 0.2  # another component this share of the largest: two objects (or a broken one)
MOON_LIKE = 70.0  # pixels this close to the moon's or the stars' colour belong to the night sky
FOREIGN = 55.0  # a plain object's pixels lie on the line from its colour to the backdrop (its blurred edge) ...
FOREIGN_SHARE = 0.08  # ... all but this share: more is an outline, dots, stripes, a glow or a face
HOLE_SEEN = 35.0  # a ring's hole shows the backdrop: its median colour this near it
DARK, DARK_SHARE = 0.5, 0.02  # inside it, pixels darker than half its luminance: this share at most (eyes, mouths)
LUMA = np.array([0.299, 0.587, 0.114])
# A plain shape is one saturated, bright colour (the world's six: saturation >= 0.75, value >= 0.56 at night;
# the model draws purple paler, as lavender); a glow's pale core, a grey robot or a navy penguin is not.
MIN_SATURATION, MIN_SATURATION_PURPLE, MIN_VALUE = 0.5, 0.38, 0.45
# Its colour: the world's colour nearest its median colour, this near and this much nearer than the next, in RGB
# and in hue (degrees).
COLOUR_NEAR, COLOUR_MARGIN = 70.0, 20.0
HUE_NEAR, HUE_MARGIN = 20.0, 6.0


@dataclass(frozen=True)
class PixelRead:
    """What the pixels decide; None where they do not."""

    background: str | None  # a BACKGROUNDS key
    night: bool | None
    shape: str | None  # a SHAPES key: the image shows exactly this one plain shape
    colour: str | None  # a COLOURS key: the colour of that shape


@dataclass(frozen=True)
class Scan:
    """The image as the check sees it, before it names anything (looks.py reads characters and styles from it)."""

    rgb: np.ndarray  # (64, 64, 3) floats
    backdrop: np.ndarray | None  # the border's median colour; None: the border is not one backdrop
    background: str | None
    night: bool | None
    mask: np.ndarray | None  # (64, 64) bool: the one object; None: not exactly one clear object


def scan(image: Image.Image | np.ndarray) -> Scan:
    """The backdrop and the one object's mask of one image (PIL or uint8 (64, 64, 3))."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR))
    rgb = image.astype(float)  # (64, 64, 3)
    border = np.concatenate([rgb[:BORDER].reshape(-1, 3), rgb[-BORDER:].reshape(-1, 3),
                             rgb[:, :BORDER].reshape(-1, 3), rgb[:, -BORDER:].reshape(-1, 3)])
    backdrop = np.median(border, 0)
    if np.mean(_distance(border, backdrop) < FAR) < BORDER_UNIFORM:
        return Scan(rgb, None, None, None, None)
    night = _night(backdrop)
    background = _background(backdrop, night)
    return Scan(rgb, backdrop, background, night, _object(rgb, backdrop, background, night))


def read(image: Image.Image | np.ndarray | Scan) -> PixelRead:
    """The pixel check of one image (PIL, uint8 (64, 64, 3), or its scan)."""
    s = image if isinstance(image, Scan) else scan(image)
    if s.backdrop is None:
        return PixelRead(None, None, None, None)
    if s.mask is None or not _plain(s.rgb, s.mask, s.backdrop):
        return PixelRead(s.background, s.night, None, None)
    body = _body_colour(s.rgb, s.mask)
    hue, saturation, value = _hue(body)
    if saturation < (MIN_SATURATION_PURPLE if 250 <= hue <= 300 else MIN_SATURATION) or value < MIN_VALUE:
        return PixelRead(s.background, s.night, None, None)  # pale, grey or dark: a character or a glow, not a shape
    shape = _shape(s.mask)
    return PixelRead(s.background, s.night, shape, _colour(body, s.night) if shape else None)


def _distance(pixels: np.ndarray, colour) -> np.ndarray:
    return np.linalg.norm(pixels - np.asarray(colour, float), axis=-1)


def _to_segment(pixels: np.ndarray, a, b) -> np.ndarray:
    """Distance of each pixel to the RGB segment a-b (a colour, another, and every blend of the two)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((pixels - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
    return np.linalg.norm(pixels - (a + t[..., None] * ab), axis=-1)


def _luminance(colour) -> float:
    return float(np.dot(colour, LUMA))


def _night(backdrop: np.ndarray) -> bool | None:
    """Night if the border is dark and near a background as night shows it; day if light and near one by day."""
    lum = _luminance(backdrop)
    night = True if lum < NIGHT_BELOW else False if lum > DAY_ABOVE else None
    if night is None or min(_distance(backdrop, _at(rgb, night)) for rgb in BACKGROUND_RGB.values()) > BACKDROP_NEAR:
        return None
    return night


def _daylight(colour, night: bool):
    """The colour as it was before night blended it toward dark blue."""
    return (np.asarray(colour, float) - NIGHT_MIX * np.asarray(NIGHT_RGB)) / (1 - NIGHT_MIX) if night else colour


def _at(colour, night: bool) -> np.ndarray:
    """A background colour as night shows it."""
    colour = np.asarray(colour, float)
    return (1 - NIGHT_MIX) * colour + NIGHT_MIX * np.asarray(NIGHT_RGB) if night else colour


def _background(backdrop: np.ndarray, night: bool | None) -> str | None:
    """The background whose colour (or a blend with its texture, counted 10 farther) the border has by day."""
    if night is None:
        return None
    day = _daylight(backdrop, night)
    d = {name: min(_distance(day, rgb), _to_segment(day, rgb, TEXTURE_RGB.get(name, rgb)) + 10)
         for name, rgb in BACKGROUND_RGB.items()}
    first, second = sorted(d.values())[:2]
    return min(d, key=d.get) if first <= BACKGROUND_NEAR and second - first >= BACKGROUND_MARGIN else None


def far_from_backdrop(rgb, backdrop, background, night) -> np.ndarray:
    """Each pixel's distance to the backdrop: its colour, its texture (grass, grains, waves) and the blends."""
    far = _distance(rgb, backdrop)
    if background in TEXTURE_RGB and night is not None:
        far = np.minimum(far, _to_segment(rgb, backdrop, _at(TEXTURE_RGB[background], night)))
    return far


def _object(rgb, backdrop, background, night) -> np.ndarray | None:
    """The one object's mask, or None if there is not exactly one clear object."""
    far = far_from_backdrop(rgb, backdrop, background, night)
    sky = (_distance(rgb, MOON_RGB) < MOON_LIKE) | (_distance(rgb, STAR_RGB) < MOON_LIKE)
    sky &= night is not False  # by day, white is a belly or a highlight, not a star
    first = _largest(far > FAR, sky)
    if first is None:
        return None
    colour = np.median(rgb[first], 0)
    cut = max(FAR * 0.75, 0.5 * float(far_from_backdrop(colour[None], backdrop, background, night)[0]))
    return _largest(far > cut, sky)


def _largest(mask: np.ndarray, sky: np.ndarray) -> np.ndarray | None:
    """The largest component that is neither a speck nor the moon, if it is the only one and clear of the edge."""
    labels, sizes = components(mask)
    kept = [(size, n) for n, size in enumerate(sizes, 1)
            if size >= SPECK and np.mean(sky[labels == n]) < 0.3]
    kept.sort(reverse=True)
    if not kept or kept[0][0] < MIN_OBJECT or (len(kept) > 1 and kept[1][0] >= SECOND_OBJECT * kept[0][0]):
        return None
    found = labels == kept[0][1]
    if found[0].any() or found[-1].any() or found[:, 0].any() or found[:, -1].any():
        return None
    return found


def components(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """4-connected components: a label image (0 outside the mask, 1..n inside) and each component's size."""
    h, w = mask.shape
    cells, labels, sizes = mask.tolist(), np.zeros((h, w), int), []
    seen = [[False] * w for _ in range(h)]
    for y0 in range(h):
        for x0 in range(w):
            if not cells[y0][x0] or seen[y0][x0]:
                continue
            stack, members = [(y0, x0)], []
            seen[y0][x0] = True
            while stack:
                y, x = stack.pop()
                members.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and cells[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            sizes.append(len(members))
            ys, xs = zip(*members)
            labels[list(ys), list(xs)] = len(sizes)
    return labels, sizes


def erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are all in the mask."""
    m = np.pad(mask, 1)
    return mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: every pixel outside it that the image's edge cannot reach."""
    labels, _ = components(np.pad(~mask, 1, constant_values=True))
    return mask | (labels != labels[0, 0])[1:-1, 1:-1]


def _body_colour(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The median colour inside the object, its blurred edge left out."""
    inner = erode(mask)
    return np.median(rgb[inner if inner.any() else mask], 0)


def _plain(rgb: np.ndarray, mask: np.ndarray, backdrop: np.ndarray) -> bool:
    """True if the object is one flat colour: (nearly) every pixel on the line from that colour to the backdrop,
    no dark marks inside it (a character's eyes and mouth), and through any hole the backdrop (not a glow's
    pale core)."""
    body, hole = _body_colour(rgb, mask), filled(mask) & ~mask
    foreign = _to_segment(rgb[mask], body, backdrop) > FOREIGN
    dark = rgb[erode(mask)] @ LUMA < DARK * _luminance(body)
    if not dark.size or (hole.any() and _distance(np.median(rgb[hole], 0), backdrop) > HOLE_SEEN):
        return False
    return float(np.mean(foreign)) <= FOREIGN_SHARE and float(np.mean(dark)) <= DARK_SHARE


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the mask's pixel squares (monotone chain, shoelace)."""
    ys, xs = np.nonzero(mask)
    corners = {(x + dx, y + dy) for x, y in zip(xs.tolist(), ys.tolist()) for dx in (0, 1) for dy in (0, 1)}
    points = sorted(corners)

    def half(pts):
        chain = []
        for p in pts:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(points) + half(points[::-1])
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1])))


def _features(mask: np.ndarray) -> dict[str, float]:
    """The object's geometry: the share, number and offset (from the centre, in heights) of its holes, the fill of
    its box, solidity, width/height, the share of its area in the top half of its box and how much the distance
    of its edge from its centre varies (std/mean: 0.02-0.03 for a circle, 0.11 a square, 0.23 a star)."""
    solid = filled(mask)
    ys, xs = np.nonzero(solid)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    area = float(solid.sum())
    holes, _ = components(solid & ~mask)
    inside = holes > 0
    offset = np.hypot(ys.mean() - np.nonzero(inside)[0].mean(), xs.mean() - np.nonzero(inside)[1].mean()) \
        if inside.any() else 0.0
    upper = solid[top:(top + bottom) // 2].sum() + (solid[(top + bottom) // 2].sum() / 2 if (bottom - top) % 2 else 0)
    edge_y, edge_x = np.nonzero(solid & ~erode(solid))
    radius = np.hypot(edge_y - ys.mean(), edge_x - xs.mean())
    angle = np.arctan2(edge_y - ys.mean(), edge_x - xs.mean())
    return {"hole": 1 - mask.sum() / area, "holes": int(holes.max()), "hole_offset": offset / (bottom - top),
            "radial": float(radius.std() / radius.mean()), "arms": _arms(angle, radius),
            "fill": area / ((bottom - top) * (right - left)),
            "solidity": area / _hull_area(solid), "aspect": (right - left) / (bottom - top), "top": upper / area}


def _arms(angle: np.ndarray, radius: np.ndarray, bins: int = 48) -> int:
    """How many points the outline has: peaks of its farthest radius per direction, each the highest within 30
    degrees and standing out 15 % of the mean radius above the lowest within 37 degrees (a star has 5)."""
    index = ((angle + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    far = np.zeros(bins)
    np.maximum.at(far, index, radius)
    for i in np.nonzero(far == 0)[0]:  # a direction without an edge pixel: its neighbours' radius
        far[i] = max(far[i - 1], far[(i + 1) % bins])
    far = (np.roll(far, 1) + far + np.roll(far, -1)) / 3
    near, wide = bins // 12, bins // 10
    peaks = [i for i in range(bins)
             if far[i] >= max(far[(i + k) % bins] for k in range(-near, near + 1))
             and far[i] - min(far[(i + k) % bins] for k in range(-wide, wide + 1)) >= 0.15 * radius.mean()]
    return len({p for p in peaks if (p - 1) % bins not in peaks})  # plateaus count once


def _hue(colour) -> tuple[float, float, float]:
    """(hue in degrees, saturation, value) of an RGB colour in 0..255."""
    h, s, v = colorsys.rgb_to_hsv(*(np.asarray(colour, float) / 255))
    return h * 360, s, v


HUES = {name: _hue(rgb)[0] for name, rgb in COLOURS.items()}


def _colour(colour: np.ndarray, night: bool | None) -> str | None:
    """The world's colour nearest in RGB (dimmed at night) and in hue, if both name it clearly.
    The model draws red toward orange and yellow toward orange: between them it abstains."""
    dims = [NIGHT_DIM] if night else [1.0] if night is False else [1.0, NIGHT_DIM]
    rgb = {name: min(_distance(colour, np.asarray(ref) * k) for k in dims) for name, ref in COLOURS.items()}
    hue = _hue(colour)[0]
    hues = {name: min(abs(hue - h), 360 - abs(hue - h)) for name, h in HUES.items()}
    (near, first), (_, second) = sorted(rgb.items(), key=lambda kv: kv[1])[:2]
    (by_hue, h1), (_, h2) = sorted(hues.items(), key=lambda kv: kv[1])[:2]
    clear = first <= COLOUR_NEAR and second - first >= COLOUR_MARGIN and h1 <= HUE_NEAR and h2 - h1 >= HUE_MARGIN
    return near if clear and near == by_hue else None


def _shape(mask: np.ndarray) -> str | None:
    """The shape whose geometry the mask has, or None. On plain renders (5th-95th percentile): ring hole
    0.30-0.32; triangle top 0.25-0.28; heart top 0.64-0.69; star solidity 0.57-0.62; square fill 0.91-1.00;
    circle fill 0.74-0.80, solidity 0.94-0.96, radial 0.02-0.03; arms: 3 triangle, 4 square, 5 star. The model
    draws softer shapes (its stars reach solidity 0.82, its small night stars blur into pentagons of 0.91-0.93,
    radial 0.07): the rules leave a gap around each, where the check abstains."""
    f = _features(mask)
    if f["hole"] >= 0.12:  # a thin rim around the backdrop (hole > 0.45) is an outline or a glow, not a ring
        centred = f["hole"] <= 0.45 and f["holes"] == 1 and f["hole_offset"] <= 0.08
        return "ring" if centred and 0.65 <= f["fill"] <= 0.88 and f["solidity"] >= 0.9 else None
    if f["holes"] or not 0.75 <= f["aspect"] <= 1.35:
        return None
    if f["top"] < 0.36:
        return "triangle" if 0.42 <= f["fill"] <= 0.68 and f["solidity"] >= 0.82 and f["arms"] == 3 else None
    if f["top"] > 0.57:
        return "heart" if 0.55 <= f["fill"] <= 0.8 and f["solidity"] >= 0.83 else None
    if not 0.4 <= f["top"] <= 0.56:
        return None
    if f["solidity"] < 0.84:
        return "star" if f["fill"] < 0.66 and f["arms"] == 5 else None
    if f["solidity"] < 0.93:
        return None
    if f["fill"] >= 0.88:
        return "square" if f["arms"] == 4 else None
    return "circle" if 0.68 <= f["fill"] <= 0.84 and f["radial"] <= 0.05 and f["arms"] == 0 else None
