"""glyphs: 33 characters (0-9, A-Z) rendered with real fonts over crops of real photographs.

A scene-text-like classification task for a phone camera model, generated offline from assets
that ship with installed packages (nothing is downloaded). The classes are the digits and the
capital letters without I, O and Q, as many licence-plate and serial-number alphabets leave
them out: they read as 1 and 0 (kept, they are most of a model's errors, and near-ties between
them make an int8 model's top-1 differ from its Keras model's by chance).

- glyph shapes: the TrueType fonts bundled with matplotlib (``matplotlib.get_data_path()``/
  fonts/ttf: DejaVu Sans, Sans Mono, Serif and STIX General, each regular/bold/oblique/
  bold-oblique; Computer Modern roman, sans, typewriter and bold), rasterised by Pillow's
  FreeType binding (``ImageFont.truetype``);
- backgrounds: random crops of the photographs bundled with scikit-image (``skimage.data``),
  each with the licence its docstring states (``PHOTOS``).

Each sample: a random font, glyph height 50-85 % of the image, rotation, shear, aspect change
and translation, sometimes neighbouring characters cut by the frame (as in a crop of a word),
sometimes a drop shadow, over a background that may be out of focus; the glyph colour is
drawn at a random luminance contrast to the background under it (one sample in twenty at low
contrast); then colour jitter, Gaussian blur, sensor noise and JPEG compression (``AUG``
holds every range). Images are RGB uint8, ``SIZE`` x ``SIZE``.

Honest split: every photograph is cut in two side by side (``REGIONS``); training backgrounds
are crops of the left 70 %, test backgrounds of the right 30 %, so no test pixel is in any
training sample. Fonts are shared: the test measures generalisation to unseen backgrounds,
not to unseen typefaces. Labels are balanced (counts differ by at most one).
Deterministic: one seeded numpy Generator per split; the arrays are bit-identical across runs
with the same package versions (the cache key includes them, models/datacache.py).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from models import datacache

DATASET = "glyphs"
VERSION = 2
CLASSES = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"  # no I, O, Q
NUM_CLASSES = len(CLASSES)
SIZE = 48
INPUT_SHAPE = (SIZE, SIZE, 3)
TRAIN, TEST = 40000, 4000
# Augmentation: ranges are uniform, probabilities are per sample; heights and shifts are
# fractions of SIZE, contrast is the luminance difference (0..1) to the background under it.
AUG = {
    "zoom_out": 4.0, "defocus": (0.0, 1.5), "tint": (0.75, 1.25), "gain": (0.75, 1.15),
    "height": (0.5, 0.85), "rotation_deg": 10.0, "shear": 0.12, "aspect": (0.85, 1.18),
    "shift": 0.07, "word": 0.15, "word_min_height": 0.65, "shadow": 0.1, "opacity": (0.9, 1.0),
    "contrast": (0.3, 0.8), "low_contrast": 0.05, "contrast_low": (0.12, 0.3),
    "contrast_gain": (0.8, 1.1), "brightness": 0.06, "blur": 0.3, "blur_sigma": (0.3, 0.9),
    "noise": 6.0, "jpeg": 0.25, "jpeg_quality": (50, 96),
}
SEED = 20240
ASSET_PACKAGES = ["matplotlib", "scikit-image", "pillow"]
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf")
FONT_LICENCES = {
    "DejaVu*": "Bitstream Vera / DejaVu fonts licence (free, redistributable; matplotlib's "
               "fonts/ttf/LICENSE_DEJAVU)",
    "STIX*": "SIL Open Font License 1.1 (matplotlib's fonts/ttf/LICENSE_STIX)",
    "cm*": "BaKoMa Computer Modern TrueType fonts shipped with matplotlib (LICENSE_BAKOMA in "
           "matplotlib's licence folder: free to use and redistribute unmodified)",
}
# skimage.data loader -> (what it shows, licence as its docstring states it)
PHOTOS = {
    "astronaut": ("astronaut Eileen Collins, NASA Great Images", "public domain (NASA)"),
    "chelsea": ("Chelsea the cat", "CC0 (photographer Stefan van der Walt)"),
    "rocket": ("DSCOVR launch on Falcon 9, SpaceX", "public domain (released by SpaceX)"),
    "hubble_deep_field": ("Hubble eXtreme Deep Field", "public domain (NASA)"),
    "immunohistochemistry": ("IHC-stained colonic glands, CMMI", "no known copyright "
                             "restrictions"),
    "retina": ("fundus photograph, Wikimedia Commons (M. Haggstrom)", "CC0 1.0"),
    "brick": ("brick wall, CC0Textures Bricks25", "CC0"),
    "grass": ("grass, DeviantArt linolafett Grass-01", "CC0"),
    "camera": ("man with a camera (Lav Varshney)", "CC0"),
    "clock": ("motion-blurred wall clock", "public domain (photographer Stefan van der Walt)"),
    "coffee": ("coffee cup, Pikolo Espresso Bar", "CC0 (photographer Rachel Michetti)"),
    "coins": ("Greek coins from Pompeii, Brooklyn Museum", "no known copyright restrictions"),
    "gravel": ("gravel, CC0Textures Gravel04", "CC0"),
}
# The honest split: each photograph is cut in two side by side; training backgrounds are crops
# of its left part, test backgrounds of its right part, so no test pixel is in any training
# sample. (Holding whole photographs out instead measures something else: with 10 training
# photographs the test accuracy then depends on which 3 were held out.)
SPLIT_AT = 0.7  # the share of each photograph's width that training crops come from
REGIONS = {"train": (0.0, SPLIT_AT), "test": (SPLIT_AT, 1.0)}
PREPROCESSING = {
    "source": "glyphs: fonts bundled with matplotlib over photographs bundled with "
              "scikit-image (models/glyphs.py)",
    "transform": f"none: RGB uint8 pixels 0..255 as float32, shape {INPUT_SHAPE}; the model's "
                 "first layer rescales (x / 127.5 - 1), so a phone feeds the camera crop's "
                 "raw RGB pixels (with int8 input: pixel - 128, scale 1)",
    "input_range": [0.0, 255.0],
    "labels": f"integers 0..{NUM_CLASSES - 1}: index into {CLASSES!r}",
    "split": f"backgrounds: train crops from the left {SPLIT_AT:.0%} of every photograph, test "
             "crops from the rest (disjoint pixels); fonts shared",
}


def load_dataset(*, cache_dir=None, train: int = 0, test: int = 0) -> dict:
    """The glyphs splits, generated once per size and cached (models/datacache.py)."""
    n_train, n_test = (train or TRAIN), (test or TEST)
    params = _plain({"train": n_train, "test": n_test, "size": SIZE, "seed": SEED,
              "fonts": list(FONTS), "photos": list(PHOTOS), "regions": REGIONS, "aug": AUG})
    arrays, card = datacache.cached(DATASET, VERSION, params, ASSET_PACKAGES,
                                    lambda: generate(n_train, n_test), root=cache_dir)
    return {**arrays, "preprocessing": PREPROCESSING, "card": card}


def generate(n_train: int, n_test: int) -> tuple[dict, dict]:
    """(arrays, card): both splits rendered from scratch (no cache); x uint8, y int64."""
    pil = _pil()
    fonts = load_fonts(pil)
    photos = load_photos(pil)
    seeds = np.random.SeedSequence(SEED).spawn(2)
    out = {}
    for split, n, seed in (("train", n_train, seeds[0]), ("test", n_test, seeds[1])):
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n) % NUM_CLASSES)
        bgs = regions(photos, split)
        x = np.empty((n, *INPUT_SHAPE), np.uint8)
        for i, c in enumerate(labels):
            x[i] = render(pil, rng, fonts, bgs, int(c))
        out[f"x_{split}"], out[f"y_{split}"] = x, labels.astype(np.int64)
    return out, card()


def _pil():
    """Pillow's modules (a dependency of matplotlib, installed with the zoo extra)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    return {"Image": Image, "ImageDraw": ImageDraw, "ImageFilter": ImageFilter,
            "ImageFont": ImageFont}


# Glyphs are drawn at this pixel size (about twice the largest glyph on the 2x canvas), then
# mapped onto a canvas twice the output size by one affine transform and box-reduced by 2.
_REF = 2 * SIZE


def load_fonts(pil) -> list[tuple]:
    """(font, cap height in pixels) for each of FONTS, from matplotlib's bundled fonts."""
    import matplotlib

    root = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    out = []
    for name in FONTS:
        font = pil["ImageFont"].truetype(os.path.join(root, name), _REF)
        top, bottom = font.getbbox("H", anchor="ls")[1::2]
        out.append((font, float(bottom - top)))
    return out


def load_photos(pil) -> dict:
    """PHOTOS as Pillow images (RGB, or L for the grey ones), as scikit-image ships them."""
    import skimage.data

    out = {}
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        out[name] = pil["Image"].fromarray(img[..., :3] if img.ndim == 3 else img)
    return out


def regions(photos: dict, split: str) -> list:
    """The part of each photograph that ``split`` takes its backgrounds from (REGIONS)."""
    lo, hi = REGIONS[split]
    out = []
    for img in photos.values():
        w, h = img.size
        out.append(img.crop((round(lo * w), 0, round(hi * w), h)))
    return out


def _background(pil, rng, photo) -> np.ndarray:
    """A random crop of a photograph, resized to SIZE, colour-jittered: float32 (S, S, 3)."""
    w, h = photo.size
    side = min(int(SIZE * np.exp(rng.uniform(0.0, np.log(AUG["zoom_out"])))), w, h)
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.resize((SIZE, SIZE), pil["Image"].BILINEAR, box=(x0, y0, x0 + side, y0 + side),
                        reducing_gap=2.0)
    sigma = rng.uniform(*AUG["defocus"])  # the glyph is in focus, the scene behind may not be
    if sigma > 0.3:
        crop = crop.filter(pil["ImageFilter"].GaussianBlur(float(sigma)))
    a = np.asarray(crop, np.float32) / 255.0
    if a.ndim == 2:  # a grey photograph: tinted
        a = np.repeat(a[..., None], 3, axis=2)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    gains = rng.uniform(*AUG["tint"], 3).astype(np.float32) * \
        np.float32(rng.uniform(*AUG["gain"]))
    return np.clip(a * gains, 0.0, 1.0)


def _glyph_mask(pil, rng, fonts, label: int) -> np.ndarray:
    """The glyph (with cut neighbours sometimes) as alpha in [0, 1], float32 (S, S)."""
    font, cap = fonts[int(rng.integers(len(fonts)))]
    height = rng.uniform(*AUG["height"]) * SIZE
    chars = [CLASSES[label]]
    if height > AUG["word_min_height"] * SIZE and rng.random() < AUG["word"]:  # a word's crop
        chars = [CLASSES[int(rng.integers(NUM_CLASSES))], chars[0],
                 CLASSES[int(rng.integers(NUM_CLASSES))]]
    width = sum(font.getlength(ch) for ch in chars) + 0.3 * _REF * len(chars)
    canvas = pil["Image"].new("L", (int(width) + 1, 2 * _REF), 0)
    draw = pil["ImageDraw"].Draw(canvas)
    x, base, centre = 0.15 * _REF, 1.4 * _REF, (0.0, 0.0)
    for i, ch in enumerate(chars):
        draw.text((x, base), ch, fill=255, font=font, anchor="ls")
        if i == len(chars) // 2:  # the labelled character
            l, t, r, b = font.getbbox(ch, anchor="ls")
            centre = (x + (l + r) / 2, base + (t + b) / 2)
        x += font.getlength(ch) + rng.uniform(0.0, 0.15) * _REF
    scale = 2 * height / cap  # onto the 2x canvas
    theta = np.deg2rad(rng.uniform(-AUG["rotation_deg"], AUG["rotation_deg"]))
    shear = rng.uniform(-AUG["shear"], AUG["shear"])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    m = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * rng.uniform(*AUG["aspect"]),
                                                             scale])
    inv = np.linalg.inv(m)
    out_c = SIZE + 2 * rng.uniform(-AUG["shift"], AUG["shift"], 2) * SIZE  # on the 2x canvas
    off = np.asarray(centre) - inv @ out_c
    data = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    big = canvas.transform((2 * SIZE, 2 * SIZE), pil["Image"].AFFINE, data,
                           pil["Image"].BILINEAR)
    return np.asarray(big.reduce(2), np.float32) / 255.0


def _luma(rgb) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _glyph_colour(rng, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An RGB colour at a random luminance contrast to the background under the glyph."""
    under = float((_luma(bg) * mask).sum() / max(mask.sum(), 1e-6))
    low = rng.random() < AUG["low_contrast"]
    d = rng.uniform(*AUG["contrast_low"]) if low else rng.uniform(*AUG["contrast"])
    up, down = under + d <= 1.0, under - d >= 0.0
    if up and down:
        sign = 1.0 if rng.random() < 0.5 else -1.0
    else:
        sign = 1.0 if (up or (not down and under < 0.5)) else -1.0
    target = float(np.clip(under + sign * d, 0.0, 1.0))
    hue = rng.random(3).astype(np.float32)
    c = hue + (np.float32(0.5) - hue) * np.float32(rng.random())  # desaturated by a random share
    return np.clip(c + (target - _luma(c)), 0.0, 1.0).astype(np.float32)


def render(pil, rng, fonts, photos, label: int) -> np.ndarray:
    """One sample: uint8 (SIZE, SIZE, 3)."""
    img = _background(pil, rng, photos[int(rng.integers(len(photos)))])
    mask = _glyph_mask(pil, rng, fonts, label)
    colour = _glyph_colour(rng, img, mask)
    if rng.random() < AUG["shadow"]:  # drop shadow: the mask shifted, darker than the glyph
        dy, dx = rng.integers(1, 3, 2)
        shadow = np.roll(mask, (int(dy), int(dx)), axis=(0, 1)) * \
            np.float32(rng.uniform(0.4, 0.8))
        img = img * (1 - shadow[..., None]) + (colour * 0.3) * shadow[..., None]
    alpha = mask[..., None] * np.float32(rng.uniform(*AUG["opacity"]))
    img = img * (1 - alpha) + colour * alpha
    img = (img - 0.5) * np.float32(rng.uniform(*AUG["contrast_gain"])) + 0.5 + \
        np.float32(rng.uniform(-AUG["brightness"], AUG["brightness"]))
    out = pil["Image"].fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < AUG["blur"]:
        sigma = float(rng.uniform(*AUG["blur_sigma"]))
        out = out.filter(pil["ImageFilter"].GaussianBlur(sigma))
    a = np.asarray(out, np.float32)
    a = a + rng.normal(0.0, rng.uniform(0.0, AUG["noise"]), a.shape).astype(np.float32)
    out = pil["Image"].fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < AUG["jpeg"]:
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=int(rng.integers(*AUG["jpeg_quality"])))
        out = pil["Image"].open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(out, np.uint8)


def card() -> dict:
    return _plain({
        "source": "rendered: matplotlib's bundled TrueType fonts (Pillow/FreeType) composited "
                  "over random crops of scikit-image's bundled photographs, with augmentation",
        "classes": list(CLASSES),
        "input": f"RGB uint8 {SIZE}x{SIZE}",
        "splits": {"train": {"photos": list(PHOTOS), "columns": list(REGIONS["train"])},
                   "test": {"photos": list(PHOTOS), "columns": list(REGIONS["test"])},
                   "disjoint": f"background pixels: train crops come from the left "
                               f"{SPLIT_AT:.0%} of each photograph's width, test crops from "
                               "the rest; fonts and photographs are shared"},
        "fonts": list(FONTS),
        "augmentation": {
            "what": "background zoom and defocus; glyph scale, rotation, shear, aspect and "
                    "translation; cut neighbouring characters (a crop of a word); drop "
                    "shadow; glyph colour at a random luminance contrast to the background "
                    "under it (some low-contrast); "
                    "background tint and gain; brightness/contrast jitter; Gaussian blur; "
                    "sensor noise; JPEG compression",
            "parameters": AUG},
        "assets": {
            "fonts": FONT_LICENCES,
            "photos": {name: {"content": what, "licence": lic}
                       for name, (what, lic) in PHOTOS.items()},
        },
        "licence": "derived from the assets above: public-domain / CC0 / no-known-copyright "
                   "photographs and freely redistributable fonts",
    })


def _plain(value):
    """JSON's own types (tuples become lists), as the card reads back from the cache."""
    return json.loads(json.dumps(value))
