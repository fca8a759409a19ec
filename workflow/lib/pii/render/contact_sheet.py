"""The contact sheet of a task: its first samples side by side, original | control | question, to check the
rendering at a glance."""


import os
from pathlib import Path

import polars as pl
from PIL import Image, ImageDraw

from pii.core.stage import PipelineError
from pii.render.strip import BLACK, load_font, resolve_font
from pii.render.variants import VARIANTS, encode_png, open_source, write_bytes_atomic

SHEET_BACKGROUND = (225, 225, 225)
SHEET_FRAME = (150, 150, 150)


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
