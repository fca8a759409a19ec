"""The image variants the models are shown (paper, section 3.1) and the manifest of each.

For every sample three variants exist:

* ``original``: the source image itself; only a manifest row is written, pointing at the source file.
* ``control``: the source image with a blank white strip added *below* it.
* ``question``: the same strip with the question written in it, black, left-aligned, word-wrapped.

The source pixels are never covered or resized: the new image is the original on top of a white strip of the
full width (its size and layout: strip.py). Control and question strips of a sample are sized from the same
question, so both variants have identical size.

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
import io
import os
import unicodedata
from pathlib import Path

import polars as pl
from PIL import Image, UnidentifiedImageError

from pii.core.images import load_rgb
from pii.core.stage import PipelineError, log
from pii.core.tables import atomic_output, records_frame, write_table
from pii.render.strip import FontInfo, compose, font_info, plan_strip

VARIANTS = ("original", "control", "question")


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
