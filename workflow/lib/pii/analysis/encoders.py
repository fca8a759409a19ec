"""Shared code of the encoder analyses (attention, layer_similarity, modality_gap).

- Geometry: where a pixel box of the image file (the manifest's strip box) lands on the processed image the vision
  encoder sees, for CLIP-style processors (optional pad-to-square, resize, centre crop) and for Qwen2.5-VL's
  smart_resize, and which patches count as text-region (area overlap with the mapped box > 50%).
- Qwen2.5-VL vision tower: hidden states of every block come out in *window order*; ``window_to_raster`` undoes it
  and returns the patches in row-major image order (grid_h x grid_w), before the merger.
- Question/control pairs from the render manifests; cosine helpers; model loading through ``vlm.load_model``.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch

from pii.core.stage import PipelineError, log
from pii.core.tables import read_table
from pii.inference.processor_view import Affine

TEXT_OVERLAP = 0.5  # a patch is text-region when more than half of its area lies inside the mapped strip box


def patch_overlap(box: tuple[float, float, float, float], grid_h: int, grid_w: int, patch: int) -> np.ndarray:
    """Fraction of each patch's area (grid_h x grid_w, row-major) inside a canvas box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    edges_x = np.arange(grid_w + 1, dtype=float) * patch
    edges_y = np.arange(grid_h + 1, dtype=float) * patch
    ox = np.clip(np.minimum(edges_x[1:], x1) - np.maximum(edges_x[:-1], x0), 0.0, None)
    oy = np.clip(np.minimum(edges_y[1:], y1) - np.maximum(edges_y[:-1], y0), 0.0, None)
    return np.outer(oy, ox) / float(patch * patch)


def text_patch_mask(row, affine: Affine, grid_h: int, grid_w: int, patch: int) -> np.ndarray:
    """Boolean (grid_h, grid_w): patches whose area overlap with the manifest row's strip box, mapped onto the
    processed canvas, is > 50%. All False for a row without a strip."""
    if row["strip_x0"] is None or row["strip_x0"] != row["strip_x0"]:  # null or NaN: no strip
        return np.zeros((grid_h, grid_w), dtype=bool)
    box = affine.box(float(row["strip_x0"]), float(row["strip_y0"]), float(row["strip_x1"]), float(row["strip_y1"]))
    return patch_overlap(box, grid_h, grid_w, patch) > TEXT_OVERLAP


# --- Qwen2.5-VL window order ---------------------------------------------------------------------------------


def qwen_window_index(visual, grid_thw: torch.Tensor) -> torch.Tensor:
    """The permutation of merge units that the vision tower applies before its blocks (transformers' own)."""
    from transformers.vision_utils import get_vision_window_index

    cfg = visual.config
    window_index, _ = get_vision_window_index(grid_thw.cpu(), spatial_merge_size=cfg.spatial_merge_size,
                                              window_size=cfg.window_size, patch_size=cfg.patch_size)
    return window_index


def window_to_processor_order(hidden: torch.Tensor, window_index: torch.Tensor, merge_unit: int) -> torch.Tensor:
    """Undo the window permutation: block outputs (seq, dim) in window order -> the processor's patch order
    (merge units of merge_size x merge_size patches, units row-major)."""
    seq, dim = hidden.shape
    units = hidden.reshape(seq // merge_unit, merge_unit, dim)
    reverse = torch.argsort(window_index.to(hidden.device))
    return units[reverse].reshape(seq, dim)


def processor_to_raster(hidden: torch.Tensor, grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """The processor's patch order (grid_h/m, grid_w/m, m, m) -> row-major patches (grid_h * grid_w, dim)."""
    dim = hidden.shape[-1]
    x = hidden.reshape(grid_h // merge, grid_w // merge, merge, merge, dim).permute(0, 2, 1, 3, 4)
    return x.reshape(grid_h * grid_w, dim)


def window_to_raster(hidden: torch.Tensor, window_index: torch.Tensor, grid_h: int, grid_w: int,
                     merge: int) -> torch.Tensor:
    return processor_to_raster(window_to_processor_order(hidden, window_index, merge * merge), grid_h, grid_w, merge)


@torch.no_grad()
def qwen_block_states(visual, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Every vision block's output for ONE image, in row-major image order (before the merger), as float32 CPU
    tensors of shape (grid_h * grid_w, hidden)."""
    if grid_thw.shape[0] != 1 or int(grid_thw[0, 0]) != 1:
        raise PipelineError("qwen_block_states takes one still image at a time")
    captured: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
             for blk in visual.blocks]
    try:
        dtype = next(visual.parameters()).dtype
        device = next(visual.parameters()).device
        visual(pixel_values.to(device=device, dtype=dtype), grid_thw=grid_thw.to(device))
    finally:
        for h in hooks:
            h.remove()
    _, gh, gw = (int(v) for v in grid_thw[0])
    window_index = qwen_window_index(visual, grid_thw)
    merge = visual.config.spatial_merge_size
    return [window_to_raster(s.float().cpu(), window_index, gh, gw, merge) for s in captured]


@torch.no_grad()
def clip_outputs(tower, pixel_values: torch.Tensor, attentions: bool = False):
    """Run a CLIP vision tower (CLIPVisionModel) on a batch; hidden_states has n_layers + 1 entries (embeddings
    first). Attentions need the eager implementation (sdpa returns none)."""
    if attentions and tower.config._attn_implementation != "eager":
        tower.set_attn_implementation("eager")
    p = next(tower.parameters())
    return tower(pixel_values.to(device=p.device, dtype=p.dtype), output_hidden_states=True,
                 output_attentions=attentions)


def clip_grid(tower) -> tuple[int, int]:
    """(grid side, patch size) of a CLIP vision tower; patch tokens follow one CLS token, row-major."""
    cfg = tower.config
    return cfg.image_size // cfg.patch_size, cfg.patch_size


# --- model access --------------------------------------------------------------------------------------------


def load_vlm(name: str, entry: dict, attn_implementation: str | None = None):
    """Load ``models.<name>`` through the inference stage's adapter (``vlm.load_model``)."""
    from pii.inference.vlm import load_model

    return load_model(name, entry, attn_implementation=attn_implementation)


# --- pairs and numbers ---------------------------------------------------------------------------------------


def load_pairs(question_manifest: str, control_manifest: str, n: int, seen_by: dict | None = None) -> pl.DataFrame:
    """The first n sample_ids (sorted) present in both manifests, one row per pair with q_* and c_* columns.
    ``seen_by`` (model name -> image processor, as inference uses it): only samples whose whole strip reaches every
    one of those encoders, so the text-region statistics are about text the encoder was shown."""
    q = read_table(question_manifest, "manifest")
    c = read_table(control_manifest, "manifest")
    common = sorted(set(q["sample_id"].to_list()) & set(c["sample_id"].to_list()))
    if not common:
        raise PipelineError(f"{question_manifest} and {control_manifest} share no sample_id; rerun rendering")
    if seen_by:
        common = whole_strip_samples(q, common, seen_by, question_manifest)
    if len(common) < n:
        log.warning("only %d question/control pairs available, %d requested", len(common), n)
    pairs = pl.DataFrame({"sample_id": common[:n]}, schema={"sample_id": pl.String})
    for prefix, manifest in (("q_", q), ("c_", c)):
        side = manifest.select("sample_id", pl.exclude("sample_id").name.prefix(prefix))
        pairs = pairs.join(side, on="sample_id", how="left", maintain_order="left")
    bad = pairs.filter((pl.col("q_width") != pl.col("c_width")) | (pl.col("q_height") != pl.col("c_height")))
    if len(bad):
        raise PipelineError(f"{question_manifest}: sample {bad['sample_id'][0]} has a different size from its control "
                            f"image in {control_manifest}; rerun rendering")
    return pairs


def whole_strip_samples(manifest: pl.DataFrame, sample_ids: list[str], seen_by: dict, source: str) -> list[str]:
    """The sample_ids whose strip every processor of ``seen_by`` passes on whole (pii/inference/processor_view.py)."""
    from pii.inference.processor_view import strip_view_of_row

    rows = {r["sample_id"]: r for r in manifest.iter_rows(named=True)}
    kept = [s for s in sample_ids
            if all(strip_view_of_row(ip, rows[s]).strip_visible_fraction >= 1.0 - 1e-9 for ip in seen_by.values())]
    log.info("%d of %d question images show their whole strip to %s", len(kept), len(sample_ids), sorted(seen_by))
    if not kept:
        raise PipelineError(f"{source}: no question image shows its whole strip to {sorted(seen_by)} (their "
                            "processors crop it away); give the model image_preprocess: pad, or use images whose "
                            "strip survives the crop")
    return kept


def row_of(pair: dict, prefix: str) -> dict:
    """One side of a pair row (a dict, as ``iter_rows(named=True)`` gives it), its prefix taken off the keys."""
    return {k[len(prefix):]: v for k, v in pair.items() if k.startswith(prefix)}


def cosine_rows(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of a and b (n, d)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def cosine_distance(u: np.ndarray, v: np.ndarray) -> float:
    """1 - cos(u, v) of two vectors."""
    return float(1.0 - cosine_rows(np.asarray(u)[None], np.asarray(v)[None])[0])


def mean_pairwise_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of 1 - cos over all (row of a, row of b) pairs."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(1.0 - (an @ bn.T).mean())


def pick_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_square(n: int) -> bool:
    return int(math.isqrt(n)) ** 2 == n
