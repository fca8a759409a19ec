"""What of the rendered strip, and of the photo, a model's image processor passes on to its vision encoder.

A rendered image carries the question in a white strip below the picture; the render manifest records the strip's
box (``strip_x0, strip_y0, strip_x1, strip_y1``: image-file pixels, exclusive ends) and the font size. Each model's
image processor then reshapes the image before the vision encoder sees it; some crop it, some tile it.

The measurement (``probed_view``, what ``Family.strip_geometry`` uses by default): a probe image of the real canvas
size, whose red and green channels ramp with the source column and row and whose blue channel codes photo and
strip, goes through the model's own image processor. Every view that comes out (one image, or the tiles and global
view of a tiling processor such as Idefics3's or LLaVA-NeXT's) is un-normalised, and its map from file pixels to
view pixels is fitted from the ramps (padding, told apart by its blue level or the processor's pixel mask, is
left out). From those maps: which strip rows and columns, and how much of the photo, reach the encoder in any view,
and the text's height in the view that shows it largest. Probes are memoised per processor and canvas size.

The per-processor rules (``strip_view``, the cross-check; also what the encoder analyses use):

- CLIP-style (``CLIPImageProcessor``, as llava-1.5-7b-hf uses): shortest edge to 336, then a centre crop of
  336 x 336. Rows or columns outside the crop never reach the encoder; a portrait image loses its strip entirely.
- LLaVA's pad-to-square (``LlavaImageProcessor(do_pad=True)``, the original LLaVA-1.5's ``expand2square``): the
  image is first centred on a square of the mean colour, so resize + crop lose nothing.
- Qwen2-VL / Qwen2.5-VL: ``smart_resize`` scales the whole image to multiples of patch_size * merge_size within
  min/max pixels; nothing is cropped.
- BLIP / InstructBLIP: a fixed height x width resize; nothing is cropped.
- Anything else: the probe's single view (``measured_affine``); a processor whose output is not one plain image
  raises a ``PipelineError`` here (``probed_view`` reads it).

The geometry itself (pad / resize / centre crop as an affine map) is ``clip_affine`` and ``qwen_affine`` below;
the encoder analyses map the strip box onto their patches with it too.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from pii.core.stage import PipelineError

# --- geometry ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Affine:
    """x' = x * sx + tx, y' = y * sy + ty: image-file pixel coordinates -> processed-canvas coordinates
    (continuous; pixel i covers [i, i+1)). out_w x out_h is the canvas the encoder patchifies."""

    sx: float
    sy: float
    tx: float
    ty: float
    out_w: int
    out_h: int

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """Map a box with exclusive ends and clip it to the canvas."""
        bx0, bx1 = x0 * self.sx + self.tx, x1 * self.sx + self.tx
        by0, by1 = y0 * self.sy + self.ty, y1 * self.sy + self.ty
        clip_x = lambda v: min(max(v, 0.0), float(self.out_w))  # noqa: E731
        clip_y = lambda v: min(max(v, 0.0), float(self.out_h))  # noqa: E731
        return clip_x(bx0), clip_y(by0), clip_x(bx1), clip_y(by1)


def _size_get(size, key):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _shortest_edge_resize(height: int, width: int, shortest: int, longest: int | None) -> tuple[int, int]:
    """Output (height, width) of transformers' shortest-edge resize (``get_resize_output_image_size`` with
    default_to_square=False, or ``get_size_with_aspect_ratio`` when a longest edge is also given)."""
    if longest:
        size, raw = shortest, None
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * size > longest:
            raw = longest * lo / hi
            size = int(round(raw))
        if (height <= width and height == size) or (width <= height and width == size):
            return height, width
        base = raw if raw is not None else size
        if width < height:
            return int(base * height / width), size
        return size, int(base * width / height)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def clip_affine(image_processor, width: int, height: int) -> Affine:
    """Geometry of a CLIP/LLaVA image processor for an image of width x height, read from its settings:
    pad to square first when it is a LLaVA processor with ``do_pad`` (image centred, as ``pad_to_square`` does),
    then resize (shortest edge, or a fixed height x width), then centre crop (crop origin ``(H - h) // 2``,
    which both transformers backends use; a crop larger than the image pads it around the centre)."""
    ip = image_processor
    w, h = float(width), float(height)
    sx = sy = 1.0
    tx = ty = 0.0
    if getattr(ip, "do_pad", False) and hasattr(ip, "pad_to_square"):
        side = max(width, height)
        if width > height:
            ty += (side - height) // 2
        elif height > width:
            tx += (side - width) // 2
        w = h = float(side)
    if getattr(ip, "do_resize", True):
        size = ip.size
        shortest, longest = _size_get(size, "shortest_edge"), _size_get(size, "longest_edge")
        fixed_h, fixed_w = _size_get(size, "height"), _size_get(size, "width")
        if shortest:
            new_h, new_w = _shortest_edge_resize(int(h), int(w), int(shortest), longest)
        elif fixed_h and fixed_w:
            new_h, new_w = int(fixed_h), int(fixed_w)
        else:
            raise PipelineError(f"image processor size {size!r} is not a shortest-edge or height/width resize; "
                                "use a CLIP-style processor for the attention and similarity analyses")
        rx, ry = new_w / w, new_h / h
        sx, sy, tx, ty = sx * rx, sy * ry, tx * rx, ty * ry
        w, h = float(new_w), float(new_h)
    if getattr(ip, "do_center_crop", False):
        ch, cw = int(_size_get(ip.crop_size, "height")), int(_size_get(ip.crop_size, "width"))
        tx -= (int(w) - cw) // 2
        ty -= (int(h) - ch) // 2
        w, h = float(cw), float(ch)
    return Affine(sx, sy, tx, ty, int(w), int(h))


def qwen_affine(width: int, height: int, grid_h: int, grid_w: int, patch_size: int) -> Affine:
    """Qwen2.5-VL resizes the whole image (smart_resize, no crop) to grid_h*patch x grid_w*patch pixels;
    the grid comes from the processor's ``image_grid_thw``."""
    out_w, out_h = grid_w * patch_size, grid_h * patch_size
    return Affine(out_w / width, out_h / height, 0.0, 0.0, out_w, out_h)


def image_processor_of(processor):
    return getattr(processor, "image_processor", processor)

# Exact class names with a known geometry (both transformers backends, the torchvision one and the PIL one).
# Subclasses are left to the measured fallback on purpose: a subclass may resize differently.
CLIP_STYLE = frozenset({"CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil",
                        "LlavaImageProcessor", "LlavaImageProcessorFast", "LlavaImageProcessorPil"})
FIXED_RESIZE = frozenset({"BlipImageProcessor", "BlipImageProcessorFast", "BlipImageProcessorPil"})
QWEN_SMART_RESIZE = frozenset({"Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast", "Qwen2VLImageProcessorPil"})

@dataclass(frozen=True)
class StripView:
    """What of the strip and the photo reaches the vision encoder.

    strip_visible_fraction: share of the strip's pixel rows that lie inside at least one view (1.0 whole strip,
        0.0 none); NaN when the image has no strip.
    strip_visible_col_fraction: the same for the strip's columns (a centre crop of a landscape image cuts its sides).
    text_px_in_model: the rendered font size times the vertical scale factor of the view that shows the text
        largest (of those showing any of the strip; of all views when none does), i.e. the text height in the
        model's input pixels; NaN when no font size is given.
    input_width, input_height, scale_x, scale_y: that view's canvas and its model pixels per image-file pixel.
    method: how the geometry was obtained: "probe" (measured through the processor), or a rule: "clip" (resize +
        centre crop, with LLaVA's pad-to-square when it is on), "fixed_resize", "smart_resize" or "measured".
    photo_visible_fraction: share of the photo's pixel rows (the image less the strip; the whole image without one)
        inside at least one view. Rows, as for the strip: a centre crop cuts the sides of every landscape photo with
        or without a strip, but photo rows are lost only when the canvas is taller than the crop keeps, as a tall
        strip makes it; with a centre crop they go together with strip rows.
    photo_visible_area: share of the photo's area inside at least one view (sides included).
    n_views: how many views (images or tiles) the processor makes of the image.
    """

    strip_visible_fraction: float
    strip_visible_col_fraction: float
    text_px_in_model: float
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    method: str
    photo_visible_fraction: float = math.nan
    photo_visible_area: float = math.nan
    n_views: int = 1

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


# --- the probe: what the processor itself does -----------------------------------------------------------------

# Blue levels that code the probe's regions. Padding comes back as 0, 255, a processor's mean colour (blue 104 for
# CLIP's mean, 127.5 for Idefics3's zeros after normalising) or a blend with the probe's edge; none is within
# PROBE_TOLERANCE of these two, so a pixel with either level is the probe's own (photo or strip).
PROBE_BLUE_PHOTO = 40
PROBE_BLUE_STRIP = 200
PROBE_BLUE = PROBE_BLUE_STRIP  # the level of a probe without a strip box
PROBE_TOLERANCE = 12
# How far (in canvas pixels) the probe's fit may put an image edge outside a view and still count it inside: the fit
# is good to a fraction of a canvas pixel, and a strip end the encoder cannot resolve is not a cut.
PROBE_EDGE_PX = 0.5


def probe_image(width: int, height: int, strip_box=None):
    """A PIL image whose red channel ramps with x, green with y (pixel i has level 255 * (i + 0.5) / n) and whose
    blue channel codes the region: PROBE_BLUE_STRIP inside the strip box (image-file pixels, exclusive ends),
    PROBE_BLUE_PHOTO elsewhere; without a box every pixel is PROBE_BLUE. Any resize keeps the ramps, so the source
    row and column of each output pixel can be read back, and padding is told apart by its blue level."""
    from PIL import Image

    xs = np.round(255.0 * (np.arange(width) + 0.5) / width).astype(np.uint8)
    ys = np.round(255.0 * (np.arange(height) + 0.5) / height).astype(np.uint8)
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[..., 0] = xs[None, :]
    arr[..., 1] = ys[:, None]
    if box_missing(strip_box):
        arr[..., 2] = PROBE_BLUE
    else:
        arr[..., 2] = PROBE_BLUE_PHOTO
        x0, y0, x1, y1 = (int(round(float(v))) for v in strip_box)
        arr[max(y0, 0):y1, max(x0, 0):x1, 2] = PROBE_BLUE_STRIP
    return Image.fromarray(arr, mode="RGB")


def box_missing(box) -> bool:
    return box is None or any(_missing(v) for v in box)


def _unnormalise(image_processor, arr: np.ndarray) -> np.ndarray:
    """pixel_values (..., 3, H, W) back to 0..255 levels: normalisation and rescaling undone."""
    ip = image_processor
    if getattr(ip, "do_normalize", False):
        mean = np.asarray(getattr(ip, "image_mean", 0.0), dtype=np.float64).reshape(-1, 1, 1)
        std = np.asarray(getattr(ip, "image_std", 1.0), dtype=np.float64).reshape(-1, 1, 1)
        arr = arr * std + mean
    if getattr(ip, "do_rescale", False):
        arr = arr / float(getattr(ip, "rescale_factor", 1.0 / 255.0))
    return arr


def _unpatchify(image_processor, values: np.ndarray, grid_thw) -> np.ndarray:
    """Qwen2-VL-style output (grid_t * grid_h * grid_w patches of C * T * P * P, merge units row-major) back to one
    (3, grid_h * P, grid_w * P) image (the first temporal frame)."""
    ip = image_processor
    _, gh, gw = (int(v) for v in np.asarray(grid_thw).reshape(-1, 3)[0])
    p, m, t = int(ip.patch_size), int(ip.merge_size), int(getattr(ip, "temporal_patch_size", 1) or 1)
    px = values.reshape(-1, gh // m, gw // m, m, m, 3, t, p, p)[0, :, :, :, :, :, 0]
    return px.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)


def processed_views(image_processor, image) -> list[np.ndarray]:
    """Run one PIL image through an image processor and return every view the encoder gets (one image, or the tiles
    and global view of a tiling processor) as (3, H, W) arrays in 0..255 levels; pixels a ``pixel_attention_mask``
    marks as padding are NaN, and wholly padded views are left out. Reads plain images (…, 3, H, W), stacks of
    tiles (1, N, 3, H, W) and Qwen2-VL's patch sequences (with ``image_grid_thw``)."""
    ip = image_processor
    out = ip(images=image, return_tensors="np")
    if "pixel_values" not in out:
        raise PipelineError(f"{type(ip).__name__} returned no pixel_values; cannot measure what it passes on")
    values = np.asarray(out["pixel_values"], dtype=np.float64)
    if "image_grid_thw" in out:
        if not all(hasattr(ip, k) for k in ("patch_size", "merge_size")):
            raise PipelineError(f"{type(ip).__name__} returns patches (image_grid_thw) but has no patch_size / "
                                "merge_size; cannot lay them out as an image")
        views = _unpatchify(ip, values, out["image_grid_thw"])[None]
        mask = None
    else:
        if values.ndim < 3 or values.shape[-3] != 3:
            raise PipelineError(f"{type(ip).__name__} returned pixel_values of shape {values.shape}, not images "
                                "(…, 3, H, W); its geometry cannot be measured this way")
        views = values.reshape(-1, *values.shape[-3:])
        mask = out.get("pixel_attention_mask")
        mask = None if mask is None else np.asarray(mask).reshape(-1, *views.shape[-2:]).astype(bool)
    views = _unnormalise(ip, views)
    kept = []
    for i, view in enumerate(views):
        if mask is not None:
            if not mask[i].any():
                continue
            view = np.where(mask[i][None], view, np.nan)
        kept.append(view)
    return kept


def processed_pixels(image_processor, image) -> np.ndarray:
    """The one processed image of a processor that gives one (3, H, W) in 0..255 levels; a PipelineError for
    several views (tiles) or patch sequences, whose single-image geometry ``measured_affine`` cannot fit."""
    ip = image_processor
    out = ip(images=image, return_tensors="np")
    values = np.asarray(out["pixel_values"], dtype=np.float64) if "pixel_values" in out else None
    if values is None:
        raise PipelineError(f"{type(ip).__name__} returned no pixel_values; cannot measure what it passes on")
    arr = values
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise PipelineError(f"{type(ip).__name__} returned pixel_values of shape {values.shape}, not one image "
                            "(3, H, W); use probe_views for processors that tile or patchify")
    return _unnormalise(ip, arr)


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


def _probe_pixels(view: np.ndarray) -> np.ndarray:
    """Which pixels of a processed view are the probe's own (photo or strip blue level), not padding or a blend."""
    blue = np.nan_to_num(view[2], nan=-1000.0)
    return ((np.abs(blue - PROBE_BLUE_PHOTO) < PROBE_TOLERANCE) | (np.abs(blue - PROBE_BLUE_STRIP) < PROBE_TOLERANCE)
            | (np.abs(blue - PROBE_BLUE) < PROBE_TOLERANCE))


def fit_view(view: np.ndarray, width: int, height: int) -> Affine:
    """The map from image-file pixels onto one processed view of the probe image, fitted row by row and column by
    column from its ramps (padding left out)."""
    _, out_h, out_w = view.shape
    valid = _probe_pixels(view)
    sy, ty = _fit_axis(view[1], valid, height)
    sx, tx = _fit_axis(view[0].T, valid.T, width)
    return Affine(sx, sy, tx, ty, out_w, out_h)


def measured_affine(image_processor, width: int, height: int) -> Affine:
    """Measure an unknown single-image processor: push ``probe_image`` through it and fit, for rows and columns, the
    line from image-file coordinates to canvas coordinates (pixels whose blue level is not the probe's, i.e.
    padding, are left out). Accurate to a fraction of a canvas pixel for any resize / pad / crop pipeline."""
    ip = image_processor_of(image_processor)
    return fit_view(processed_pixels(ip, probe_image(width, height)), width, height)


# Probe results per image processor (the object; dropped with it) and canvas size: many requests share a size, and
# the views' geometry depends on nothing else (the strip box only says which part of them is strip).
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe_views(image_processor, width: int, height: int) -> tuple[Affine, ...]:
    """The geometry of every view the processor makes of a width x height image (one for a resize / pad / crop
    processor; the tiles and the global view of a tiling one), measured by pushing ``probe_image`` through it.
    Memoised per processor object and size."""
    ip = image_processor_of(image_processor)
    try:
        memo = _PROBED.setdefault(ip, {})
    except TypeError:  # an object that cannot be weakly referenced: measured each time
        memo = {}
    key = (int(width), int(height))
    if key not in memo:
        views = processed_views(ip, probe_image(width, height))
        if not views:
            raise PipelineError(f"{type(ip).__name__} returned only padding for the probe image")
        memo[key] = tuple(fit_view(v, width, height) for v in views)
    return memo[key]


# --- the strip -----------------------------------------------------------------------------------------------


def visible_fractions(affine: Affine, box) -> tuple[float, float]:
    """(row share, column share) of a box (x0, y0, x1, y1; image-file pixels, exclusive ends) that lands inside
    the processed canvas; NaN, NaN for a box with missing values (no strip)."""
    if box_missing(box):
        return math.nan, math.nan
    x0, y0, x1, y1 = _box(box)
    cx0, cy0, cx1, cy1 = affine.box(x0, y0, x1, y1)
    # the same arithmetic as Affine.box, unclipped, so that a box wholly inside gives exactly 1.0
    full_w = (x1 * affine.sx + affine.tx) - (x0 * affine.sx + affine.tx)
    full_h = (y1 * affine.sy + affine.ty) - (y0 * affine.sy + affine.ty)
    return _snap(max(cy1 - cy0, 0.0) / full_h), _snap(max(cx1 - cx0, 0.0) / full_w)


def _box(box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise PipelineError(f"strip box {tuple(box)} is empty; expected x0 < x1 and y0 < y1 (exclusive ends)")
    return x0, y0, x1, y1


def _snap(fraction: float) -> float:
    """Exactly 1 or 0 within float rounding (1e-9, far below one pixel row): a box whose end maps onto the
    canvas edge is whole, not 0.9999999999999991."""
    return 1.0 if fraction > 1.0 - 1e-9 else 0.0 if fraction < 1e-9 else fraction


def photo_box(width: int, height: int, strip_box) -> tuple[float, float, float, float]:
    """The photo's part of the image file: everything above the strip (the renderer adds the strip below the
    photo; a strip at the top leaves the rows below it), or the whole image when there is no strip."""
    if box_missing(strip_box):
        return 0.0, 0.0, float(width), float(height)
    _, y0, _, y1 = _box(strip_box)
    return (0.0, 0.0, float(width), y0) if y0 > 0 else (0.0, y1, float(width), float(height))


def seen_rect(affine: Affine, width: int, height: int, edge_px: float = 0.0) -> tuple[float, float, float, float]:
    """The part of the image file (x0, y0, x1, y1) that lands inside one view, an image edge within ``edge_px``
    canvas pixels outside the view counting as inside."""
    def span(s, t, out, n):
        lo, hi = -t / s, (out - t) / s
        slack = edge_px / s  # in file pixels; snaps an edge, never moves a cut
        return (0.0 if lo <= slack else lo), (float(n) if hi >= n - slack else hi)

    x0, x1 = span(affine.sx, affine.tx, affine.out_w, width)
    y0, y1 = span(affine.sy, affine.ty, affine.out_h, height)
    return x0, y0, x1, y1


def _intersect(a, b):
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _union_length(intervals) -> float:
    total, end = 0.0, -math.inf
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def _union_area(rects) -> float:
    """Area of a union of a few axis-aligned rectangles (exact, over the grid of their edges)."""
    xs = sorted({v for r in rects for v in (r[0], r[2])})
    area = 0.0
    for a, b in zip(xs[:-1], xs[1:], strict=True):
        area += (b - a) * _union_length([(r[1], r[3]) for r in rects if r[0] <= a and r[2] >= b])
    return area


def _view_of(affines, width: int, height: int, strip_box, font_px, method: str, edge_px: float) -> StripView:
    """What a set of views (one per tile or image) passes on of the strip and of the photo."""
    seen = [seen_rect(a, width, height, edge_px) for a in affines]
    photo = photo_box(width, height, strip_box)
    photo_parts = [r for r in (_intersect(s, photo) for s in seen) if r]
    photo_h = photo[3] - photo[1]
    photo_rows = _snap(_union_length([(r[1], r[3]) for r in photo_parts]) / photo_h) if photo_h > 0 else math.nan
    photo_area = (photo[2] - photo[0]) * photo_h
    photo_area_frac = _snap(_union_area(photo_parts) / photo_area) if photo_area > 0 else math.nan
    rows = cols = math.nan
    showing = list(range(len(affines)))
    if not box_missing(strip_box):
        box = _box(strip_box)
        parts = {i: r for i, r in enumerate(_intersect(s, box) for s in seen) if r}
        rows = _snap(_union_length([(r[1], r[3]) for r in parts.values()]) / (box[3] - box[1]))
        cols = _snap(_union_length([(r[0], r[2]) for r in parts.values()]) / (box[2] - box[0]))
        showing = list(parts) or showing
    # the text's size in the view that shows it largest (of those that show any of the strip, else of all)
    best = max((affines[i] for i in showing), key=lambda a: a.sy)
    text_px = math.nan if _missing(font_px) else float(font_px) * best.sy
    return StripView(strip_visible_fraction=rows, strip_visible_col_fraction=cols, text_px_in_model=text_px,
                     input_width=best.out_w, input_height=best.out_h, scale_x=best.sx, scale_y=best.sy,
                     method=method, photo_visible_fraction=photo_rows, photo_visible_area=photo_area_frac,
                     n_views=len(affines))


def _checked_size(width, height) -> tuple[int, int]:
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise PipelineError(f"image size {width}x{height} is not positive")
    return width, height


def strip_view(image_processor, width: int, height: int, strip_box, font_px) -> StripView:
    """What an image processor passes on of the strip of a width x height image, from the per-processor rules
    (``processor_affine``; the cross-check of ``probed_view``).

    strip_box: (strip_x0, strip_y0, strip_x1, strip_y1) from the render manifest (image-file pixels, exclusive
    ends), or None / a tuple of None or NaN for an image without a strip (then both fractions are NaN).
    font_px: the rendered font size in image-file pixels, or None (text_px_in_model is then NaN).
    """
    width, height = _checked_size(width, height)
    affine, method = processor_affine(image_processor, width, height)
    return _view_of([affine], width, height, strip_box, font_px, method, edge_px=0.0)


def probed_view(image_processor, width: int, height: int, strip_box, font_px) -> StripView:
    """What an image processor passes on of the strip and the photo, measured by the processor itself: a probe
    image of the real canvas size goes through it (``probe_views``, memoised per size) and every view it makes,
    image or tile, is read back. method is "probe"."""
    width, height = _checked_size(width, height)
    if not box_missing(strip_box):
        _box(strip_box)
    affines = probe_views(image_processor, width, height)
    return _view_of(affines, width, height, strip_box, font_px, "probe", edge_px=PROBE_EDGE_PX)


def strip_view_of_row(image_processor, row) -> StripView:
    """``strip_view`` for one render-manifest row (a mapping with width, height, strip_x0..strip_y1, font_size,
    e.g. ``frame.row(i, named=True)``)."""
    box = tuple(row[k] for k in ("strip_x0", "strip_y0", "strip_x1", "strip_y1"))
    return strip_view(image_processor, int(row["width"]), int(row["height"]), box, row.get("font_size"))

