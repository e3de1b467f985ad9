"""Draws a `Scene` as a 64x64 RGB image (PIL, 4x supersampled) and returns each object's mask.

Shapes take their colour; identities are fixed multi-colour figures; an artist style
changes how every object is drawn; the background and night change the whole image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .scenes import COLOURS, Scene, Thing

__all__ = ["render", "SIZE", "BACKGROUND_RGB", "TEXTURE_RGB", "NIGHT_RGB", "NIGHT_MIX", "NIGHT_DIM", "MOON_RGB",
           "STAR_RGB"]

SIZE = 64
SCALE = 4  # supersampling factor
S = SIZE * SCALE
BACKGROUND_RGB = {"plain": (225, 225, 225), "grass": (95, 150, 60), "sand": (225, 200, 140), "water": (110, 170, 230)}
TEXTURE_RGB = {"grass": (60, 110, 35), "sand": (190, 160, 100), "water": (200, 230, 250)}  # blades, grains, waves
NIGHT_RGB, NIGHT_MIX = (10, 15, 50), 0.72  # night blends the background this far toward dark blue
NIGHT_DIM = 0.75  # and dims every object to this share
MOON_RGB, STAR_RGB = (250, 240, 170), (240, 240, 200)


def _star(cx, cy, r):
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _heart(cx, cy, r):
    pts = []
    for i in range(60):
        t = 2 * math.pi * i / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 17, cy - r * (y + 2) / 17))
    return pts


def _shape_mask(kind: str, cx: float, cy: float, r: float) -> Image.Image:
    """A white-on-black mask of a plain shape of radius r at (cx, cy), supersampled pixels."""
    mask = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(mask)
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        d.ellipse(box, fill=255)
    elif kind == "square":
        q = r * 0.85
        d.rectangle((cx - q, cy - q, cx + q, cy + q), fill=255)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=255)
    elif kind == "star":
        d.polygon(_star(cx, cy, r * 1.1), fill=255)
    elif kind == "heart":
        d.polygon(_heart(cx, cy, r), fill=255)
    elif kind == "ring":
        d.ellipse(box, fill=255)
        w = r * 0.45
        d.ellipse((cx - r + w, cy - r + w, cx + r - w, cy + r - w), fill=0)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return mask


def _identity(kind: str, cx: float, cy: float, r: float) -> tuple[Image.Image, Image.Image]:
    """An identity's fixed figure: (RGB layer, mask)."""
    layer = Image.new("RGB", (S, S), 0)
    mask = Image.new("L", (S, S), 0)
    d, m = ImageDraw.Draw(layer), ImageDraw.Draw(mask)

    def both(method, xy, colour, **kw):
        getattr(d, method)(xy, fill=colour, **kw)
        getattr(m, method)(xy, fill=255, **kw)

    if kind == "Mimo":  # yellow smiling face
        both("ellipse", (cx - r, cy - r, cx + r, cy + r), (245, 200, 30))
        for ex in (-0.38, 0.38):
            d.ellipse((cx + ex * r - r * 0.13, cy - r * 0.4, cx + ex * r + r * 0.13, cy - r * 0.1), fill=(20, 20, 20))
        d.arc((cx - r * 0.55, cy - r * 0.4, cx + r * 0.55, cy + r * 0.6), 20, 160, fill=(20, 20, 20),
              width=int(r * 0.14))
    elif kind == "Zubrik":  # grey robot head, red eyes, antenna
        both("rectangle", (cx - r * 0.85, cy - r * 0.55, cx + r * 0.85, cy + r * 0.95), (150, 155, 165))
        both("line", (cx, cy - r * 0.55, cx, cy - r * 0.95), (90, 90, 90), width=int(r * 0.12))
        both("ellipse", (cx - r * 0.16, cy - r * 1.1, cx + r * 0.16, cy - r * 0.8), (230, 30, 30))
        for ex in (-0.4, 0.4):
            d.rectangle((cx + ex * r - r * 0.18, cy - r * 0.2, cx + ex * r + r * 0.18, cy + r * 0.1),
                        fill=(230, 30, 30))
        d.rectangle((cx - r * 0.45, cy + r * 0.45, cx + r * 0.45, cy + r * 0.6), fill=(60, 60, 60))
    elif kind == "Lumina":  # pink ghost
        both("ellipse", (cx - r * 0.8, cy - r, cx + r * 0.8, cy + r * 0.6), (245, 150, 205))
        both("rectangle", (cx - r * 0.8, cy - r * 0.2, cx + r * 0.8, cy + r * 0.75), (245, 150, 205))
        for i in range(3):
            bx = cx - r * 0.8 + (i + 0.5) * r * 1.6 / 3
            both("ellipse", (bx - r * 0.27, cy + r * 0.55, bx + r * 0.27, cy + r), (245, 150, 205))
        for ex in (-0.3, 0.3):
            d.ellipse((cx + ex * r - r * 0.14, cy - r * 0.45, cx + ex * r + r * 0.14, cy - r * 0.1), fill=(30, 20, 60))
    elif kind == "Tobble":  # navy penguin
        both("ellipse", (cx - r * 0.75, cy - r, cx + r * 0.75, cy + r), (30, 40, 100))
        d.ellipse((cx - r * 0.45, cy - r * 0.3, cx + r * 0.45, cy + r * 0.9), fill=(245, 245, 245))
        for ex in (-0.25, 0.25):
            d.ellipse((cx + ex * r - r * 0.12, cy - r * 0.65, cx + ex * r + r * 0.12, cy - r * 0.4),
                      fill=(255, 255, 255))
        d.polygon([(cx - r * 0.18, cy - r * 0.3), (cx + r * 0.18, cy - r * 0.3), (cx, cy - r * 0.05)],
                  fill=(250, 140, 20))
    else:
        raise ValueError(f"unknown identity {kind!r}")
    return layer, mask


def _thing(thing: Thing) -> tuple[Image.Image, Image.Image]:
    cx, cy, r = thing.x * SCALE, thing.y * SCALE, thing.size * SCALE / 2
    if thing.is_identity:
        return _identity(thing.kind, cx, cy, r)
    mask = _shape_mask(thing.kind, cx, cy, r)
    return Image.new("RGB", (S, S), COLOURS[thing.colour]), mask


def _stylise(style: str, layer: Image.Image, mask: Image.Image, canvas: Image.Image) -> None:
    """Pastes one object onto the canvas, drawn in an artist's style."""
    if style == "Vellor":  # thick black outline
        outline = mask.filter(ImageFilter.MaxFilter(4 * SCALE - 1))
        canvas.paste((15, 15, 15), (0, 0), outline)
        canvas.paste(layer, (0, 0), mask)
    elif style == "Quimby":  # halftone dots on a pale tint
        tint = Image.blend(layer, Image.new("RGB", (S, S), (250, 250, 250)), 0.75)
        dots = Image.new("L", (S, S), 0)
        d = ImageDraw.Draw(dots)
        step, rad = 5 * SCALE, 1.7 * SCALE
        for yy in range(0, S, step):
            for xx in range((yy // step % 2) * step // 2, S, step):
                d.ellipse((xx - rad, yy - rad, xx + rad, yy + rad), fill=255)
        canvas.paste(tint, (0, 0), mask)
        canvas.paste(layer, (0, 0), ImageChops.multiply(dots, mask))
    elif style == "Zaranth":  # neon glow: bright core, coloured halo
        halo = mask.filter(ImageFilter.MaxFilter(3 * SCALE + 1)).filter(ImageFilter.GaussianBlur(3 * SCALE))
        canvas.paste(layer, (0, 0), halo)
        core = Image.blend(layer, Image.new("RGB", (S, S), (255, 255, 255)), 0.55)
        canvas.paste(core, (0, 0), mask)
    elif style == "Brusk":  # diagonal brush-stroke stripes
        dark = layer.point(lambda v: int(v * 0.55))
        stripes = Image.new("L", (S, S), 0)
        d = ImageDraw.Draw(stripes)
        for k in range(-S, S, 6 * SCALE):
            d.line((k, S, k + S, 0), fill=255, width=3 * SCALE)
        canvas.paste(layer, (0, 0), mask)
        canvas.paste(dark, (0, 0), ImageChops.multiply(stripes, mask))
    else:
        canvas.paste(layer, (0, 0), mask)


def _background(name: str, night: bool, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (S, S), BACKGROUND_RGB[name])
    d = ImageDraw.Draw(img)
    if name == "grass":
        for _ in range(140):
            x, y = rng.uniform(0, S, 2)
            d.line((x, y, x + rng.uniform(-6, 6), y - rng.uniform(10, 22)), fill=TEXTURE_RGB[name], width=SCALE)
    elif name == "sand":
        for _ in range(220):
            x, y = rng.uniform(0, S, 2)
            d.ellipse((x, y, x + SCALE, y + SCALE), fill=TEXTURE_RGB[name])
    elif name == "water":
        phase = rng.uniform(0, 2 * math.pi)
        for y0 in range(10, S, 9 * SCALE):
            pts = [(x, y0 + 2 * SCALE * math.sin(x / (5 * SCALE) + phase)) for x in range(0, S + 8, 8)]
            d.line(pts, fill=TEXTURE_RGB[name], width=SCALE)
    if night:
        img = Image.blend(img, Image.new("RGB", (S, S), NIGHT_RGB), NIGHT_MIX)
    return img


def _moon(canvas: Image.Image, scene: Scene, rng: np.random.Generator) -> None:
    """A crescent moon and a few stars, in the corner farthest from the objects."""
    corners = [(10, 10), (54, 10), (10, 54), (54, 54)]
    far = max(corners, key=lambda c: min((c[0] - t.x) ** 2 + (c[1] - t.y) ** 2 for t in scene.things))
    cx, cy, r = far[0] * SCALE, far[1] * SCALE, 6 * SCALE
    moon = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(moon)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    d.ellipse((cx - r + 3.5 * SCALE, cy - r - SCALE, cx + r + 3.5 * SCALE, cy + r - SCALE), fill=0)
    canvas.paste(MOON_RGB, (0, 0), moon)
    d = ImageDraw.Draw(canvas)
    for _ in range(6):
        x, y = rng.uniform(0, S, 2)
        d.ellipse((x, y, x + SCALE, y + SCALE), fill=STAR_RGB)


def render(scene: Scene, seed: int = 0) -> tuple[Image.Image, list[np.ndarray]]:
    """The scene as a 64x64 RGB image, and a boolean 64x64 mask for each of its things."""
    rng = np.random.default_rng(seed)
    canvas = _background(scene.background, scene.night, rng)
    if scene.night:
        _moon(canvas, scene, rng)
    masks = []
    for thing in scene.things:
        layer, mask = _thing(thing)
        if scene.night:
            layer = layer.point(lambda v: int(v * NIGHT_DIM))
        _stylise(scene.style, layer, mask, canvas)
        masks.append(np.asarray(mask.resize((SIZE, SIZE), Image.BOX)) > 127)
    return canvas.resize((SIZE, SIZE), Image.LANCZOS), masks
