"""One way to turn an image file into the RGB pixels that the renderer and the models see.

Rendering, inference and the encoder analyses all load images through ``load_rgb``. The ``original`` variant's
manifest points at the source file itself, so this is what makes a model shown the original see exactly the
pixels that form the upper part of the rendered ``control`` and ``question`` variants.

- EXIF orientation is applied (``ImageOps.exif_transpose``): the upright picture that image viewers, browsers
  and annotation tools show. Files without the tag (ordinary COCO JPEGs) keep their pixels unchanged.
- Transparency (an alpha channel, or palette / tRNS transparency) is composited onto white, the colour of the
  strip; a plain ``convert("RGB")`` drops alpha and shows whatever colour the hidden pixels hold (often black).
- 16-bit greyscale (PNG ``I;16``; ``I``) is scaled to 8 bit, v * 255 / 65535 rounded; ``convert`` would clip
  every value above 255 to white. ``I`` is read as 16-bit too (older Pillow opened 16-bit PNGs as ``I``).
- Palette, greyscale, bilevel, CMYK and YCbCr images take Pillow's ordinary conversion to RGB.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def to_rgb(image: Image.Image) -> Image.Image:
    """An upright 8-bit RGB copy of ``image`` (see the module docstring)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        # a new image: a 16-bit tRNS colour (rare) is not carried over, the picture is kept opaque
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.mode == "F":
        raise ValueError("32-bit float pixels (mode F) have no agreed range; convert the image to 8-bit RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """Decode an image file completely (a truncated file fails here, not inside a model) and return
    ``to_rgb`` of it. Pillow's errors (OSError, ValueError, ...) pass through for the caller to name the file."""
    with Image.open(source) as image:
        image.load()
        return to_rgb(image)


def is_plain(image: Image.Image) -> bool:
    """True when ``to_rgb`` would change nothing but the colour model: 8-bit RGB or grey, opaque, upright. Such a
    file can be sent to a server as it is (ordinary COCO JPEGs and the rendered PNGs are)."""
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = upright
    return image.mode in ("RGB", "L") and "transparency" not in image.info and orientation == 1


def as_sent(raw: bytes) -> tuple[bytes, bool]:
    """The bytes to send a remote model for an image file: the file itself when it is plain, otherwise a PNG of the
    pixels ``load_rgb`` gives (the ones the transformers backend sees). Second value: whether it was re-encoded."""
    with Image.open(io.BytesIO(raw)) as image:
        if is_plain(image):
            return raw, False
    out = io.BytesIO()
    load_rgb(io.BytesIO(raw)).save(out, format="PNG")
    return out.getvalue(), True
