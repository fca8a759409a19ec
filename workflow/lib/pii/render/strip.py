"""The question strip: fonts (a font package name or a file), greedy word wrapping, the strip's size for an image
and its text, and the image with the strip composed below it.

Text layout (our choice, fixed): lines are left-aligned at ``x = padding``, wrapped greedily at word boundaries
to ``width - 2 * padding`` (a word wider than that is broken between characters), the text block is centred
vertically in the strip. Line pitch is ``round(line_spacing * font_size)``; a block of n lines is
``(n - 1) * pitch + ascent + descent`` high (the font's own metrics), so no glyph can reach the strip's border.
Pillow's BASIC layout engine is used (no libraqm), so the output does not depend on optional system libraries:
the same input gives byte-identical PNGs. The strip height is the larger of (a) the height that makes it
``strip_fraction`` of the new image (solve ``h = f * (H + h)``) and (b) the height the wrapped text needs with
``padding`` on each side."""


import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError
from PIL import Image, ImageDraw, ImageFont

from pii.core.stage import PipelineError
from pii.core.tables import sha256_file

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
MIN_FONT_SIZE = 8  # px: below this no text is legible, so an image too narrow for it cannot carry a question


# --- fonts ------------------------------------------------------------------------------------------------


def resolve_font(spec: str) -> Path:
    """The .ttf file for ``render.font``: a path to a font file, or the name of a ``fontpkg-<name>`` package
    (e.g. ``arimo``), whose upright (Regular) file is used."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".ttf", ".otf") or os.sep in spec or "/" in spec:
        if not path.is_file():
            raise PipelineError(f"render.font: font file '{spec}' not found; give an existing .ttf path or 'arimo'")
        return path
    module_name = f"fontpkg_{spec.lower().replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PipelineError(
            f"render.font: '{spec}' is neither a font file nor an installed font package ({module_name}); "
            f"pip install fontpkg-{spec.lower()} or give a path to a .ttf"
        ) from err
    files = sorted(Path(module.__file__).resolve().parent.rglob("*.ttf"))
    upright = [f for f in files if "italic" not in f.name.lower()]
    regular = [f for f in upright if "regular" in f.name.lower()]
    chosen = (regular or upright or [None])[0]
    if chosen is None:
        raise PipelineError(f"render.font: package {module_name} holds no upright .ttf file; give a .ttf path")
    return chosen


def load_font(path: str | os.PathLike, size: int) -> ImageFont.FreeTypeFont:
    """Load a TrueType font at ``size`` px with the BASIC layout engine; a variable font is set to its
    Regular instance (weight 400 for Arimo)."""
    try:
        font = ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)
    except OSError as err:
        raise PipelineError(f"render.font: cannot load '{path}' as a TrueType font ({err}); give a valid .ttf") from err
    try:
        names = font.get_variation_names()
    except OSError:  # not a variable font
        names = []
    if b"Regular" in names:
        font.set_variation_by_name("Regular")
    return font


def font_codepoints(path: str | os.PathLike) -> frozenset[int]:
    """The characters the font has glyphs for (its cmap); FreeType draws any other one as the .notdef box."""
    try:
        with TTFont(str(path), lazy=True, fontNumber=0) as ttf:  # face 0 of a collection, as Pillow loads it
            return frozenset(ttf.getBestCmap() or ())
    except (TTLibError, OSError, KeyError) as err:
        raise PipelineError(f"render.font: cannot read the character map of '{path}' ({err}); give a valid .ttf") from err


@dataclass(frozen=True)
class FontInfo:
    path: Path
    file_name: str
    sha256: str
    size: int
    font: ImageFont.FreeTypeFont
    codepoints: frozenset[int]


def font_info(spec: str, size: int) -> FontInfo:
    path = resolve_font(spec)
    return FontInfo(path=path, file_name=path.name, sha256=sha256_file(path), size=size, font=load_font(path, size),
                    codepoints=font_codepoints(path))


# --- layout -----------------------------------------------------------------------------------------------


def _ink_width(font: ImageFont.FreeTypeFont, text: str) -> float:
    """Horizontal room a line takes: its advance or its ink's right edge, whichever is larger."""
    return max(font.getlength(text), font.getbbox(text)[2]) if text else 0.0


def wrap_text(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Greedy word wrap to ``max_width`` px; a single word wider than that is broken between characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _ink_width(font, candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        if _ink_width(font, word) <= max_width:
            current = word
            continue
        for ch in word:  # the word alone is too wide: break it
            if current and _ink_width(font, current + ch) > max_width:
                lines.append(current)
                current = ""
            current += ch
    if current:
        lines.append(current)
    return lines


@dataclass(frozen=True)
class StripPlan:
    width: int
    orig_height: int
    strip_height: int
    lines: tuple[str, ...]
    text_top: int  # y of the first line's top (ascent line), in new-image pixels
    pitch: int
    ascent: int
    padding: int

    @property
    def height(self) -> int:
        return self.orig_height + self.strip_height

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The strip's pixel box (x0, y0, x1, y1), ends exclusive."""
        return (0, self.orig_height, self.width, self.height)


def fraction_height(orig_height: int, fraction: float) -> int:
    """Strip height h with h = fraction * (orig_height + h), rounded to whole pixels."""
    return round(fraction * orig_height / (1.0 - fraction))


def _widest_glyph(font: ImageFont.FreeTypeFont) -> float:
    return max(_ink_width(font, ch) for ch in "MW@")


def _too_narrow(width: int, height: int, max_width: int, font: ImageFont.FreeTypeFont, cfg: dict) -> str:
    """Why the text does not fit, with advice that can work for this image."""
    if width - 2 < _widest_glyph(font.font_variant(size=MIN_FONT_SIZE)):  # not even 8 px text with 1 px padding
        return (f"image is {width}x{height} px, too narrow for any legible text below it; drop this image from the "
                "input (e.g. its POPE lines) or replace it with a larger one (font size or padding cannot help)")
    return (f"image width {width} px leaves {max_width} px for text at {cfg['font_size']} px with padding "
            f"{cfg['padding']}; lower render.font_size or render.padding")


def plan_strip(width: int, height: int, text: str, font: ImageFont.FreeTypeFont, cfg: dict,
               with_text: bool = True) -> StripPlan:
    """Lay out ``text`` in a strip below a ``width`` x ``height`` image (see the module docstring). An image too
    narrow for the text is an error when the text is to be drawn; a blank strip (``with_text=False``) then gets
    the height of one line, the least any question would need."""
    padding = int(cfg["padding"])
    max_width = width - 2 * padding
    fits = max_width >= _widest_glyph(font)
    if not fits and with_text:
        raise PipelineError(_too_narrow(width, height, max_width, font, cfg))
    lines = tuple(wrap_text(text, font, max_width)) if fits else ()
    ascent, descent = font.getmetrics()
    pitch = round(float(cfg["line_spacing"]) * int(cfg["font_size"]))
    n_lines = len(lines) if fits else 1  # a blank strip with no room for text: one line high
    block = (n_lines - 1) * pitch + ascent + descent if n_lines else 0
    strip_height = max(fraction_height(height, float(cfg["strip_fraction"])), block + 2 * padding)
    text_top = height + (strip_height - block) // 2
    return StripPlan(width=width, orig_height=height, strip_height=strip_height, lines=lines, text_top=text_top,
                     pitch=pitch, ascent=ascent, padding=padding)


def compose(image: Image.Image, plan: StripPlan, font: ImageFont.FreeTypeFont, with_text: bool) -> Image.Image:
    """The original image on top of a white strip; the question drawn into the strip when ``with_text``."""
    canvas = Image.new("RGB", (plan.width, plan.height), WHITE)
    canvas.paste(image, (0, 0))
    if with_text and plan.lines:
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(plan.lines):
            baseline = plan.text_top + plan.ascent + i * plan.pitch
            draw.text((plan.padding, baseline), line, font=font, fill=BLACK, anchor="ls")
    return canvas
