"""How much of the rendered strip a model's image processor passes on to its vision encoder.

A rendered image carries the question in a white strip below the picture; the render manifest records the strip's
box (``strip_x0, strip_y0, strip_x1, strip_y1``: image-file pixels, exclusive ends) and the font size. Each model's
image processor then reshapes the image before the vision encoder sees it, and some of them crop:

- CLIP-style (``CLIPImageProcessor``, as llava-1.5-7b-hf uses): shortest edge to 336, then a centre crop of
  336 x 336. Rows or columns outside the crop never reach the encoder; a portrait image loses its strip entirely.
- LLaVA's pad-to-square (``LlavaImageProcessor(do_pad=True)``, the original LLaVA-1.5's ``expand2square``): the
  image is first centred on a square of the mean colour, so resize + crop lose nothing.
- Qwen2-VL / Qwen2.5-VL: ``smart_resize`` scales the whole image to multiples of patch_size * merge_size within
  min/max pixels; nothing is cropped.
- BLIP / InstructBLIP: a fixed height x width resize; nothing is cropped.
- Anything else: a synthetic image is pushed through the processor and the geometry is measured from its output
  (``measured_affine``); a processor whose output is not one plain image raises a ``PipelineError``.

``strip_view`` returns the share of the strip's rows (and, separately, columns) that lie inside the processed
canvas, the font size in the model's input pixels, and the canvas size. The geometry itself (pad / resize /
centre crop as an affine map) is ``encoders.clip_affine`` and ``encoders.qwen_affine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from encoders import Affine, _size_get, clip_affine, image_processor_of, qwen_affine
from pipeline_io import PipelineError

# Exact class names with a known geometry (both transformers backends, the torchvision one and the PIL one).
# Subclasses are left to the measured fallback on purpose: a subclass may resize differently.
CLIP_STYLE = frozenset({"CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil",
                        "LlavaImageProcessor", "LlavaImageProcessorFast", "LlavaImageProcessorPil"})
FIXED_RESIZE = frozenset({"BlipImageProcessor", "BlipImageProcessorFast", "BlipImageProcessorPil"})
QWEN_SMART_RESIZE = frozenset({"Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast", "Qwen2VLImageProcessorPil"})

PROBE_BLUE = 200  # blue level of every pixel of the probe image: padding (0, the mean colour, white) differs


@dataclass(frozen=True)
class StripView:
    """What of the strip reaches the vision encoder.

    strip_visible_fraction: share of the strip's pixel rows that lie inside the processed canvas (1.0 whole strip,
        0.0 none); NaN when the image has no strip.
    strip_visible_col_fraction: the same for the strip's columns (a centre crop of a landscape image cuts its sides).
    text_px_in_model: the rendered font size times the vertical scale factor, i.e. the text height in the model's
        input pixels (whether or not the strip survives the crop); NaN when no font size is given.
    input_width, input_height: the processed canvas the encoder patchifies.
    scale_x, scale_y: model input pixels per image-file pixel.
    method: how the geometry was obtained: "clip" (resize + centre crop, with LLaVA's pad-to-square when it is on),
        "fixed_resize", "smart_resize" or "measured".
    """

    strip_visible_fraction: float
    strip_visible_col_fraction: float
    text_px_in_model: float
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    method: str

    @property
    def has_strip(self) -> bool:
        return not math.isnan(self.strip_visible_fraction)


def _missing(value) -> bool:
    """None (a null in a polars row), NaN, or pandas' NA."""
    if value is None:
        return True
    try:
        return bool(value != value)  # only NaN differs from itself
    except TypeError:  # pandas' NA has no truth value
        return True


def qwen_settings(image_processor) -> tuple[int, int, int, int]:
    """(patch_size, merge_size, min_pixels, max_pixels) of a Qwen2-VL image processor: ``size`` shortest_edge /
    longest_edge (how transformers 5 keeps them), else ``size`` or attribute min_pixels / max_pixels."""
    ip = image_processor
    size = getattr(ip, "size", None)
    min_pixels = _size_get(size, "shortest_edge") or _size_get(size, "min_pixels") or getattr(ip, "min_pixels", None)
    max_pixels = _size_get(size, "longest_edge") or _size_get(size, "max_pixels") or getattr(ip, "max_pixels", None)
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    if not (min_pixels and max_pixels and patch and merge):
        raise PipelineError(f"{type(ip).__name__} lacks min/max pixels, patch_size or merge_size (size={size!r}); "
                            "cannot work out its smart_resize grid")
    return int(patch), int(merge), int(min_pixels), int(max_pixels)


def _smart_resize():
    try:  # the PIL backend's module imports without torchvision; both carry the same function
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    return smart_resize


def qwen_grid(image_processor, width: int, height: int) -> tuple[int, int, int]:
    """(grid_h, grid_w, patch_size) that a Qwen2-VL image processor gives an image of width x height, with
    transformers' own ``smart_resize`` (no model needed); the same as the processor's ``image_grid_thw``."""
    patch, merge, min_pixels, max_pixels = qwen_settings(image_processor)
    if getattr(image_processor, "do_resize", True):
        new_h, new_w = _smart_resize()(height, width, factor=patch * merge, min_pixels=min_pixels,
                                       max_pixels=max_pixels)
    else:
        new_h, new_w = height, width
    return new_h // patch, new_w // patch, patch


def processor_affine(image_processor, width: int, height: int) -> tuple[Affine, str]:
    """The map from image-file pixels to the processed canvas for an image of width x height, and the method
    ("clip", "fixed_resize", "smart_resize" or "measured") that gave it. A full processor (with an
    ``image_processor`` attribute) is unwrapped."""
    ip = image_processor_of(image_processor)
    name = type(ip).__name__
    if name in QWEN_SMART_RESIZE:
        grid_h, grid_w, patch = qwen_grid(ip, width, height)
        return qwen_affine(width, height, grid_h, grid_w, patch), "smart_resize"
    if name in CLIP_STYLE:
        return clip_affine(ip, width, height), "clip"
    if name in FIXED_RESIZE:
        return clip_affine(ip, width, height), "fixed_resize"
    return measured_affine(ip, width, height), "measured"


# --- measured fallback ---------------------------------------------------------------------------------------


def probe_image(width: int, height: int):
    """A PIL image whose red channel ramps with x, green with y (pixel i has level 255 * (i + 0.5) / n) and blue is
    PROBE_BLUE everywhere, so that any resize keeps the ramps and padding is told apart by its blue level."""
    from PIL import Image

    xs = np.round(255.0 * (np.arange(width) + 0.5) / width).astype(np.uint8)
    ys = np.round(255.0 * (np.arange(height) + 0.5) / height).astype(np.uint8)
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[..., 0] = xs[None, :]
    arr[..., 1] = ys[:, None]
    arr[..., 2] = PROBE_BLUE
    return Image.fromarray(arr, mode="RGB")


def processed_pixels(image_processor, image) -> np.ndarray:
    """Run one PIL image through an image processor and return its pixel_values as (3, H, W) in 0..255 levels
    (normalisation and rescaling undone). Raises PipelineError when the output is not one plain image (patch
    sequences such as Qwen's, several crops, tiles)."""
    ip = image_processor
    out = ip(images=image, return_tensors="np")
    values = out["pixel_values"] if "pixel_values" in out else None
    if values is None:
        raise PipelineError(f"{type(ip).__name__} returned no pixel_values; cannot measure what it passes on")
    arr = np.asarray(values, dtype=np.float64)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise PipelineError(f"{type(ip).__name__} returned pixel_values of shape {np.shape(values)}, not one image "
                            "(3, H, W); its geometry cannot be measured this way: add a rule for it to strip_view")
    if getattr(ip, "do_normalize", False):
        mean = np.asarray(getattr(ip, "image_mean", 0.0), dtype=np.float64).reshape(-1, 1, 1)
        std = np.asarray(getattr(ip, "image_std", 1.0), dtype=np.float64).reshape(-1, 1, 1)
        arr = arr * std + mean
    if getattr(ip, "do_rescale", False):
        arr = arr / float(getattr(ip, "rescale_factor", 1.0 / 255.0))
    return arr


def _fit_axis(levels: np.ndarray, valid: np.ndarray, n_file: int) -> tuple[float, float]:
    """Fit canvas = s * file + t along one axis from the ramp levels of each canvas line (rows or columns, with
    the probe's pixels marked valid); file coordinates are continuous (pixel i covers [i, i+1))."""
    keep = valid.sum(axis=1) >= max(1, valid.shape[1] // 10)
    centre = np.arange(levels.shape[0]) + 0.5
    level = np.array([np.median(row[ok]) if k else np.nan for row, ok, k in zip(levels, valid, keep, strict=True)])
    file_pos = level * n_file / 255.0
    # The ramp is steps of n/255 file pixels, and resampling near an edge bends it: fit, drop outliers, refit.
    tol = max(3.0 * n_file / 255.0, 2.0)
    for _ in range(3):
        if keep.sum() < 2:
            raise PipelineError("too few lines of the probe image came through the processor to measure its geometry")
        a, b = np.polyfit(centre[keep], file_pos[keep], 1)  # file = a * canvas + b
        resid = np.abs(file_pos - (a * centre + b))
        keep = keep & (resid <= tol)
    if not a > 0:
        raise PipelineError("the probe image came back flipped or flat; cannot measure the processor's geometry")
    return 1.0 / a, -b / a


def measured_affine(image_processor, width: int, height: int) -> Affine:
    """Measure an unknown image processor: push ``probe_image`` through it and fit, for rows and columns, the
    line from image-file coordinates to canvas coordinates (pixels whose blue level is not the probe's, i.e.
    padding, are left out). Accurate to a fraction of a canvas pixel for any resize / pad / crop pipeline."""
    ip = image_processor_of(image_processor)
    px = processed_pixels(ip, probe_image(width, height))
    _, out_h, out_w = px.shape
    valid = np.abs(px[2] - PROBE_BLUE) < 12
    sy, ty = _fit_axis(px[1], valid, height)
    sx, tx = _fit_axis(px[0].T, valid.T, width)
    return Affine(sx, sy, tx, ty, out_w, out_h)


# --- the strip -----------------------------------------------------------------------------------------------


def visible_fractions(affine: Affine, box) -> tuple[float, float]:
    """(row share, column share) of a box (x0, y0, x1, y1; image-file pixels, exclusive ends) that lands inside
    the processed canvas; NaN, NaN for a box with missing values (no strip)."""
    if box is None or any(_missing(v) for v in box):
        return math.nan, math.nan
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise PipelineError(f"strip box {tuple(box)} is empty; expected x0 < x1 and y0 < y1 (exclusive ends)")
    cx0, cy0, cx1, cy1 = affine.box(x0, y0, x1, y1)
    # the same arithmetic as Affine.box, unclipped, so that a box wholly inside gives exactly 1.0
    full_w = (x1 * affine.sx + affine.tx) - (x0 * affine.sx + affine.tx)
    full_h = (y1 * affine.sy + affine.ty) - (y0 * affine.sy + affine.ty)
    return _snap(max(cy1 - cy0, 0.0) / full_h), _snap(max(cx1 - cx0, 0.0) / full_w)


def _snap(fraction: float) -> float:
    """Exactly 1 or 0 within float rounding (1e-9, far below one pixel row): a box whose end maps onto the
    canvas edge is whole, not 0.9999999999999991."""
    return 1.0 if fraction > 1.0 - 1e-9 else 0.0 if fraction < 1e-9 else fraction


def strip_view(image_processor, width: int, height: int, strip_box, font_px) -> StripView:
    """What an image processor passes on of the strip of a width x height image.

    strip_box: (strip_x0, strip_y0, strip_x1, strip_y1) from the render manifest (image-file pixels, exclusive
    ends), or None / a tuple of None or NaN for an image without a strip (then both fractions are NaN).
    font_px: the rendered font size in image-file pixels, or None (text_px_in_model is then NaN).
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise PipelineError(f"image size {width}x{height} is not positive")
    affine, method = processor_affine(image_processor, width, height)
    rows, cols = visible_fractions(affine, strip_box)
    text_px = math.nan if _missing(font_px) else float(font_px) * affine.sy
    return StripView(strip_visible_fraction=rows, strip_visible_col_fraction=cols, text_px_in_model=text_px,
                     input_width=affine.out_w, input_height=affine.out_h, scale_x=affine.sx, scale_y=affine.sy,
                     method=method)


def strip_view_of_row(image_processor, row) -> StripView:
    """``strip_view`` for one render-manifest row (a mapping with width, height, strip_x0..strip_y1, font_size,
    e.g. ``frame.row(i, named=True)``)."""
    box = tuple(row[k] for k in ("strip_x0", "strip_y0", "strip_x1", "strip_y1"))
    return strip_view(image_processor, int(row["width"]), int(row["height"]), box, row.get("font_size"))
