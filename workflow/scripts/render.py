"""Stage: render the image variants the models are shown (paper, section 3.1), and the contact sheets; the rules
render_variants and render_contact_sheet each have their own script.

For every sample three variants exist:

* ``original``: the source image itself; only a manifest row is written, pointing at the source file.
* ``control``: the source image with a blank white strip added *below* it.
* ``question``: the same strip with the question written in it, black, left-aligned, word-wrapped.

The source pixels are never covered or resized: the new image is the original on top of a white strip of the
full width. The strip height is the larger of (a) the height that makes it ``strip_fraction`` of the new image
(solve ``h = f * (H + h)``) and (b) the height the wrapped text needs with ``padding`` on each side. Control and
question strips of a sample are sized from the same question, so both variants have identical size.

Text layout (our choice, fixed): lines are left-aligned at ``x = padding``, wrapped greedily at word boundaries
to ``width - 2 * padding`` (a word wider than that is broken between characters), the text block is centred
vertically in the strip. Line pitch is ``round(line_spacing * font_size)``; a block of n lines is
``(n - 1) * pitch + ascent + descent`` high (the font's own metrics), so no glyph can reach the strip's border.
Pillow's BASIC layout engine is used (no libraqm), so the output does not depend on optional system libraries:
the same input gives byte-identical PNGs.

Source pixels come from ``images.load_rgb`` (EXIF orientation applied, transparency onto white, 16-bit scaled
to 8 bit), the loader inference uses too, so the ``original`` variant shows a model the same upright picture as
the upper part of ``control`` and ``question``; ``orig_width`` / ``orig_height`` are the upright size.

Questions are NFC-normalised (``unicodedata.normalize("NFC", ...)``) before they are checked, drawn and recorded,
so a question stored decomposed renders and scores exactly as its composed form; the manifest's ``text`` is the
text as drawn. Questions are checked before any output is written: an empty question, or one with characters the font has no
glyph for (they would be drawn as empty boxes while the manifest records the real text), fails the job. An image
too narrow for any text fails the ``question`` variant; its ``control`` still renders, with a one-line strip.

Every PNG is encoded in memory, hashed, written to a temporary name and renamed into place; the manifest is
written last, atomically, so a killed job never leaves a manifest that points at a truncated file.
"""


import hashlib
import importlib
import io
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from fontTools.ttLib import TTFont, TTLibError
from images import load_rgb
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from pipeline_io import (
    PipelineError,
    atomic_output,
    log,
    records_frame,
    sha256_file,
    write_table,
)

VARIANTS = ("original", "control", "question")
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
SHEET_BACKGROUND = (225, 225, 225)
SHEET_FRAME = (150, 150, 150)
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


# --- files ------------------------------------------------------------------------------------------------


def open_source(path: str, sample_id: str) -> tuple[Image.Image, bytes]:
    """Decode a source image fully (so a truncated file fails here) and return it as upright RGB
    (``images.load_rgb``) with its bytes."""
    fix = "restore the file or rerun the data stage that lists it (results/data/*_sample.parquet)"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"sample {sample_id}: source image '{path}' is missing; {fix}") from None
    except OSError as err:
        raise PipelineError(f"sample {sample_id}: cannot read source image '{path}' ({err}); {fix}") from err
    try:
        rgb = load_rgb(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise PipelineError(f"sample {sample_id}: source image '{path}' is corrupt or not an image ({err}); {fix}") from err
    return rgb, data


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with no metadata (no time stamps), so equal pixels give equal files."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fastest zlib level; photos barely shrink at 6
    return buf.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: a reader never sees a partial file."""
    with atomic_output(path) as f:
        f.write(data)


# --- the stage --------------------------------------------------------------------------------------------


def _question_text(row: dict, sample_id: str) -> str:
    """The question as it is checked, drawn and recorded: Unicode NFC (a decomposed 'é', e + U+0301, becomes the
    one character the font draws as such and the manifest and the scorers compare), white space collapsed."""
    question = row["question"]
    if question is None or question != question:  # NaN: none
        question = ""
    text = " ".join(unicodedata.normalize("NFC", str(question)).split())
    if not text:
        raise PipelineError(f"sample {sample_id}: empty question in the sample table; fix the data stage's output")
    return text


def check_questions(samples: pl.DataFrame, font: FontInfo | None) -> None:
    """Fail on the first sample whose question is empty or has characters the font lacks, before any output
    is written (the control strip is sized from the question's layout, so both text variants check)."""
    for row in samples.iter_rows(named=True):
        sample_id = str(row["sample_id"])
        text = _question_text(row, sample_id)
        if font is None:
            continue
        missing = sorted({ch for ch in text if ord(ch) not in font.codepoints})
        if missing:
            chars = ", ".join(f"'{ch}' (U+{ord(ch):04X})" for ch in missing)
            raise PipelineError(
                f"sample {sample_id}: the question has characters the font {font.file_name} has no glyph for: "
                f"{chars}; they would be drawn as empty boxes. Set render.font to a .ttf that has them, or fix the "
                "question")


def render_one(row: dict, variant: str, out_dir: Path, cfg: dict, font: FontInfo | None) -> dict:
    """Render (or, for 'original', only describe) one sample's variant and return its manifest row."""
    sample_id = str(row["sample_id"])
    image, data = open_source(str(row["image_path"]), sample_id)
    width, height = image.size
    record = {
        "sample_id": sample_id,
        "image_id": int(row["image_id"]),
        "variant": variant,
        "source_path": str(row["image_path"]),
        "orig_width": width,
        "orig_height": height,
    }
    if variant == "original":
        record.update(image_path=str(row["image_path"]), width=width, height=height, strip_x0=None, strip_y0=None,
                      strip_x1=None, strip_y1=None, text=None, n_lines=None, font_file=None, font_sha256=None,
                      font_size=None, image_sha256=hashlib.sha256(data).hexdigest())
        return record
    text = _question_text(row, sample_id)
    with_text = variant == "question"
    try:
        plan = plan_strip(width, height, text, font.font, cfg, with_text=with_text)
    except PipelineError as err:
        raise PipelineError(f"sample {sample_id} ('{row['image_path']}'): {err}") from None
    png = encode_png(compose(image, plan, font.font, with_text))
    target = out_dir / f"{sample_id}.png"
    write_bytes_atomic(target, png)
    x0, y0, x1, y1 = plan.box
    record.update(image_path=str(target), width=plan.width, height=plan.height, strip_x0=x0, strip_y0=y0,
                  strip_x1=x1, strip_y1=y1, text=text if with_text else "",
                  n_lines=len(plan.lines) if with_text else 0, font_file=font.file_name, font_sha256=font.sha256,
                  font_size=font.size, image_sha256=hashlib.sha256(png).hexdigest())
    return record


MANIFEST_COLUMNS = ["sample_id", "image_id", "variant", "source_path", "image_path", "width", "height",
                    "orig_width", "orig_height", "strip_x0", "strip_y0", "strip_x1", "strip_y1", "text", "n_lines",
                    "font_file", "font_sha256", "font_size", "image_sha256"]
# Integer columns that are null for the 'original' variant; the text and font columns of that variant hold only
# nulls, stored with Arrow's null type.
_NULLABLE_INT = {c: pl.Int64 for c in ("strip_x0", "strip_y0", "strip_x1", "strip_y1", "n_lines", "font_size")}


def render_variant(samples: pl.DataFrame, variant: str, manifest_path: str | os.PathLike, cfg: dict,
                   task: str | None = None) -> pl.DataFrame:
    """Render every sample's ``variant`` and write the manifest; PNGs go to the folder named like the
    manifest without its suffix (results/images/{task}/{variant}/{sample_id}.png)."""
    if variant not in VARIANTS:
        raise PipelineError(f"unknown variant '{variant}'; use one of {list(VARIANTS)}")
    manifest_path = Path(manifest_path)
    out_dir = manifest_path.with_suffix("")
    ids = samples["sample_id"]
    dupes = ids.filter(ids.is_duplicated() & ~ids.is_first_distinct()).to_list()
    if dupes:
        raise PipelineError(f"sample table: sample_id {dupes[0]!r} occurs more than once; fix the data stage")
    font = None if variant == "original" else font_info(cfg["font"], int(cfg["font_size"]))
    check_questions(samples, font)
    written: list[Path] = []
    rows = []
    try:
        for i, row in enumerate(samples.iter_rows(named=True), start=1):
            rows.append(render_one(row, variant, out_dir, cfg, font))
            if variant != "original":
                written.append(Path(rows[-1]["image_path"]))
            if i % 200 == 0 or i == len(samples):
                log.info("%s/%s: %d/%d images", task or "-", variant, i, len(samples))
    except BaseException:
        for path in written:  # leave no images behind that no manifest describes
            path.unlink(missing_ok=True)
        raise
    manifest = records_frame(rows, MANIFEST_COLUMNS, _NULLABLE_INT)
    if variant != "original":
        _remove_stale(out_dir, {p.name for p in written})
    metadata = {"task": task, "variant": variant, "render": {k: cfg[k] for k in sorted(cfg)}}
    if font is not None:
        metadata["font"] = {"file": font.file_name, "sha256": font.sha256, "size": font.size}
    write_table(manifest, manifest_path, "manifest", metadata=metadata)
    log.info("wrote %s (%d rows)", manifest_path, len(manifest))
    return manifest


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete PNGs and temporary files of earlier runs that the new manifest does not list."""
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if path.is_file() and path.name not in keep and (path.suffix in (".png", ".part")):
            path.unlink()


# --- contact sheet ----------------------------------------------------------------------------------------


def contact_sheet(manifests: dict[str, pl.DataFrame], n: int, font_spec: str, out_path: str | os.PathLike,
                  cell_width: int = 400) -> None:
    """One row per sample (the first ``n`` of the question manifest): original | control | question, scaled
    to at most ``cell_width`` px wide (never enlarged), with column titles and a sample label per row."""
    title_font = load_font(resolve_font(font_spec), 22)
    label_font = load_font(resolve_font(font_spec), 15)
    by_variant = {v: {r["sample_id"]: r for r in df.iter_rows(named=True)} for v, df in manifests.items()}
    ids = [s for s in manifests["question"]["sample_id"].to_list() if all(s in by_variant[v] for v in VARIANTS)]
    ids = ids[:n]
    if not ids:
        raise PipelineError("contact sheet: no sample is present in all three manifests; rerun render_variants")
    gap, label_h, title_h = 12, 22, 36
    rows = []
    for sample_id in ids:
        cells = []
        for v in VARIANTS:
            path = by_variant[v][sample_id]["image_path"]
            img, _ = open_source(path, sample_id)
            scale = min(1.0, cell_width / img.width)
            if scale < 1.0:
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.LANCZOS)
            cells.append(img)
        rows.append((sample_id, cells))
    col_w = max(c.width for _, cells in rows for c in cells)
    sheet_w = gap + 3 * (col_w + gap)
    sheet_h = title_h + sum(label_h + max(c.height for c in cells) + gap for _, cells in rows) + gap
    sheet = Image.new("RGB", (sheet_w, sheet_h), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for j, v in enumerate(VARIANTS):
        x = gap + j * (col_w + gap) + col_w // 2
        draw.text((x, title_h // 2), v, font=title_font, fill=BLACK, anchor="mm")
    y = title_h
    for sample_id, cells in rows:
        src = by_variant["original"][sample_id]
        draw.text((gap, y + label_h - 5), f"{sample_id}  ({src['orig_width']}x{src['orig_height']})",
                  font=label_font, fill=BLACK, anchor="ls")
        y += label_h
        for j, cell in enumerate(cells):
            x = gap + j * (col_w + gap)
            sheet.paste(cell, (x, y))
            draw.rectangle((x - 1, y - 1, x + cell.width, y + cell.height), outline=SHEET_FRAME)
        y += max(c.height for c in cells) + gap
    write_bytes_atomic(Path(out_path), encode_png(sheet))
