"""Stage analysis / rule layer_similarity: how much rendering the question into the strip changes each encoder
layer's patch representations, for Qwen2.5-VL's vision transformer and for CLIP (LLaVA's tower).

For every pair (question vs control image of the same POPE sample; both have the same size, hence the same patch
grid) and every layer, the cosine similarity between the two images' hidden states at the same patch position.
Qwen: every vision block's output, window order undone, before the patch merger. CLIP: hidden_states[1..L]
(each encoder layer's output), CLS token dropped. Patches are split into text-region (> 50% of the patch inside
the strip box mapped through the processor) and image-region (the rest).
"""

import gc

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from pii.analysis.encoders import (
    clip_grid,
    clip_outputs,
    cosine_rows,
    load_pairs,
    load_vlm,
    qwen_block_states,
    row_of,
    text_patch_mask,
)
from pii.core.images import load_rgb  # noqa: E402
from pii.core.stage import PipelineError, log
from pii.core.tables import records_frame, save_figure, write_table
from pii.inference import families  # noqa: E402
from pii.inference.processor_view import clip_affine, image_processor_of, qwen_affine

REGIONS = ("image", "text")


def _open(meta: dict) -> Image.Image:
    return load_rgb(meta["image_path"])  # the loader inference uses


def qwen_pair_states(visual, image_processor, meta: dict) -> tuple[list[torch.Tensor], np.ndarray]:
    """Block outputs in row-major image order and the text-region mask (grid_h, grid_w) of one image."""
    enc = image_processor(images=[_open(meta)], return_tensors="pt")
    grid_thw = enc["image_grid_thw"]
    _, gh, gw = (int(v) for v in grid_thw[0])
    states = qwen_block_states(visual, enc["pixel_values"], grid_thw)
    patch = visual.config.patch_size
    mask = text_patch_mask(meta, qwen_affine(int(meta["width"]), int(meta["height"]), gh, gw, patch), gh, gw, patch)
    return states, mask


def clip_pair_states(tower, image_processor, meta: dict) -> tuple[list[torch.Tensor], np.ndarray]:
    """Every CLIP layer's output (patch tokens only) and the text-region mask of one image."""
    pv = image_processor(images=_open(meta), return_tensors="pt")["pixel_values"]
    grid, patch = clip_grid(tower)
    affine = clip_affine(image_processor, int(meta["width"]), int(meta["height"]))
    if (affine.out_h, affine.out_w) != tuple(pv.shape[-2:]):
        raise PipelineError(f"{meta['image_path']}: processed image is {tuple(pv.shape[-2:])}, expected "
                            f"{(affine.out_h, affine.out_w)} from the processor settings")
    out = clip_outputs(tower, pv)
    states = [h[0, 1:].float().cpu() for h in out.hidden_states[1:]]
    return states, text_patch_mask(meta, affine, grid, grid, patch)


# How to read each kind of vision tower (Family.vision_encoder).
PAIR_STATES = {"qwen": qwen_pair_states, "clip": clip_pair_states}


def similarity_rows(model: str, family: str, sample_id: str, q_states, c_states, mask: np.ndarray) -> list[dict]:
    """One row per layer and region: per-patch cosine similarities (question vs control) and their summary."""
    text = mask.reshape(-1)
    n_layers = len(q_states)
    rows = []
    for layer, (q, c) in enumerate(zip(q_states, c_states, strict=True), start=1):
        if q.shape != c.shape:
            raise PipelineError(f"{sample_id}: question and control patch grids differ at layer {layer}")
        cos = cosine_rows(q.numpy(), c.numpy())
        for region in REGIONS:
            values = cos[text] if region == "text" else cos[~text]
            rows.append({
                "model": model, "family": family, "sample_id": sample_id, "layer": layer, "n_layers": n_layers,
                "layer_from_end": n_layers - layer, "region": region, "n_patches": int(values.size),
                "mean": float(values.mean()) if values.size else None,
                "q25": float(np.quantile(values, 0.25)) if values.size else None,
                "median": float(np.median(values)) if values.size else None,
                "q75": float(np.quantile(values, 0.75)) if values.size else None,
                "values": values.astype(float).tolist(),
            })
    return rows


def analyse_model(model_name: str, family: str, loaded, pairs: pl.DataFrame) -> list[dict]:
    image_processor = image_processor_of(loaded.processor)
    kind = families.get(family).vision_encoder
    if kind not in PAIR_STATES:
        raise PipelineError(f"analysis.layer_similarity.models: '{model_name}' has family '{family}', whose vision "
                            f"tower this analysis cannot read; use a model of {families.supporting('layer_similarity')}")
    encoder = families.get(family).vision_tower(loaded.model)
    states_of = PAIR_STATES[kind]
    encoder.eval()
    rows = []
    for i, pair in enumerate(pairs.iter_rows(named=True)):
        q_states, q_mask = states_of(encoder, image_processor, row_of(pair, "q_"))
        c_states, c_mask = states_of(encoder, image_processor, row_of(pair, "c_"))
        if not np.array_equal(q_mask, c_mask):
            raise PipelineError(f"{pair['sample_id']}: question and control strips map to different patches; "
                                "the two variants must share size and strip box (rerun rendering)")
        rows += similarity_rows(model_name, family, pair["sample_id"], q_states, c_states, q_mask)
        log.info("%s pair %d/%d %s: %d layers, %d text-region patches", model_name, i + 1, len(pairs),
                 pair["sample_id"], len(q_states), int(q_mask.sum()))
    return rows


def plot_similarity(table: pl.DataFrame, last_n: int, path) -> None:
    models = list(dict.fromkeys(table["model"].to_list()))
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.0, 0.75 * last_n + 2.5) * len(models), 4.8),
                             squeeze=False, sharey=True)
    colours = {"image": "tab:blue", "text": "tab:red"}
    for ax, model in zip(axes[0], models, strict=True):
        sub = table.filter(pl.col("model") == model)
        n_layers = int(sub["n_layers"][0])
        layers = list(range(max(1, n_layers - last_n + 1), n_layers + 1))
        for r_i, region in enumerate(REGIONS):
            data, positions = [], []
            for l_i, layer in enumerate(layers):
                sel = sub.filter((pl.col("layer") == layer) & (pl.col("region") == region))
                values = (np.concatenate([np.asarray(v, dtype=float) for v in sel["values"].to_list()]) if len(sel)
                          else [])
                data.append(values if len(values) else np.array([np.nan]))
                positions.append(l_i + (r_i - 0.5) * 0.38)
            box = ax.boxplot(data, positions=positions, widths=0.34, showfliers=False, patch_artist=True,
                             manage_ticks=False, medianprops={"color": "black"})
            for artist in box["boxes"]:
                artist.set_facecolor(colours[region])
                artist.set_alpha(0.55)
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel(f"encoder layer (last {len(layers)} of {n_layers})")
        family = sub["family"][0]
        ax.set_title(f"{families.get(family).encoder_label or family} ({model})")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("cosine similarity per patch\n(question vs control image)")
    n_pairs = table["sample_id"].n_unique()
    axes[0, -1].legend(handles=[Patch(facecolor=colours[r], alpha=0.55, label=f"{r}-region patches") for r in REGIONS],
                       loc="lower left")
    fig.suptitle(f"Layer-wise similarity of question and control images ({n_pairs} POPE pairs)")
    fig.tight_layout()
    save_figure(fig, path)


def run(models: list[str], entries: dict[str, dict], n_pairs: int, last_n_layers: int, seed: int,
        question_manifest: str, control_manifest: str, table_path: str, figure_path: str) -> None:
    """The layer-wise similarity of question and control images in each model's vision encoder: the table and
    its figure."""
    models = list(models)
    torch.manual_seed(seed)
    from pii.inference.vlm import load_image_processor

    # the same pairs for every model: samples whose whole strip each model's encoder is shown
    seen_by = {name: load_image_processor(name, entries[name]) for name in models}
    pairs = load_pairs(question_manifest, control_manifest, n_pairs, seen_by)
    rows = []
    for name in models:
        entry = entries[name]
        loaded = load_vlm(name, entry)
        rows += analyse_model(name, entry["family"], loaded, pairs)
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    table = records_frame(rows)
    plot_similarity(table, last_n_layers, figure_path)
    config = {"analysis.layer_similarity": {"models": models, "n_pairs": n_pairs, "last_n_layers": last_n_layers},
              "seed": seed, **{f"models.{m}": entries[m] for m in models}}
    meta = {"models": {m: entries[m]["path"] for m in models}, "text_overlap_threshold": 0.5,
            "qwen_states": "vision block outputs, window order undone, before the merger",
            "clip_states": "hidden_states[1..L], CLS dropped", "config": config}
    write_table(table, table_path, "layer_similarity", metadata=meta)
    log.info("wrote %d rows", len(table))
