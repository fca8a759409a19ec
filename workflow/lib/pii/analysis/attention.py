"""Stage analysis / rule attention: where CLIP ViT-L/14 (the vision tower of a LLaVA model) attends on
question vs control images of the POPE task.

For each pair (same sample, question strip vs blank strip) and each probed layer (the configured 1-based layers,
the last layer, and the layer whose output the model feeds its language model: ``vision_feature_layer`` of the
model's config, -2 for LLaVA-1.5, i.e. layer 23 of 24; the paper's "final layer" 24 is one LLaVA never uses),
the head-averaged attention matrix A (tokens = CLS + patches, row = query) gives, per patch:
- ``cls``: CLS-to-patch attention A[CLS, patch] (the heat map drawn over the images),
- ``recv``: mean attention the patch receives, averaged over all query tokens,
- ``diag``: self-attention A[patch, patch] (the paper's last-layer diagonal).
Each is averaged over text-region patches and over the rest. Text-region patches: the manifest's strip box mapped
through the processor's pad/resize/centre crop; a patch counts when > 50% of its area lies inside the box.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pii.analysis.encoders import clip_grid, clip_outputs, load_pairs, load_vlm, row_of, text_patch_mask
from pii.core.images import load_rgb  # noqa: E402
from pii.core.stage import PipelineError, log
from pii.core.tables import records_frame, save_figure, write_table
from pii.inference import families  # noqa: E402
from pii.inference.processor_view import clip_affine, image_processor_of

VARIANTS = ("question", "control")
N_EXAMPLES = 2  # pairs drawn in attention_maps.png


def attention_stats(attn: torch.Tensor, text_mask: np.ndarray) -> tuple[dict, dict]:
    """attn: (heads, T, T) of one image, T = 1 + n_patches. Returns the summary numbers and per-patch maps."""
    a = attn.float().mean(0).cpu().numpy()
    maps = {"cls": a[0, 1:], "recv": a[:, 1:].mean(0), "diag": np.diag(a)[1:]}
    text = text_mask.reshape(-1)
    if text.shape[0] != maps["cls"].shape[0]:
        raise PipelineError(f"attention has {maps['cls'].shape[0]} patch tokens, the patch grid {text.shape[0]}")
    stats = {"n_text_patches": int(text.sum()), "n_other_patches": int((~text).sum())}
    for key, values in maps.items():
        stats[f"{key}_text"] = float(values[text].mean()) if text.any() else None
        stats[f"{key}_other"] = float(values[~text].mean()) if (~text).any() else None
    return stats, maps


def display_image(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """Undo the processor's normalisation for drawing: (H, W, 3) in [0, 1]."""
    x = pixel_values[0].float().cpu().numpy().transpose(1, 2, 0)
    mean = np.asarray(getattr(image_processor, "image_mean", None) or [0.0] * 3)
    std = np.asarray(getattr(image_processor, "image_std", None) or [1.0] * 3)
    if getattr(image_processor, "do_normalize", True):
        x = x * std + mean
    return np.clip(x, 0.0, 1.0)


def encode_image(tower, image_processor, meta: dict):
    """One manifest row (an image and its strip box) through the image processor and the CLIP tower, as LLaVA's
    forward runs them: the pixel values, the strip's map onto the processed image, the text-region mask and the
    tower's outputs (hidden states and attentions of every layer)."""
    grid, patch = clip_grid(tower)
    image = load_rgb(meta["image_path"])  # the loader inference uses
    pv = image_processor(images=image, return_tensors="pt")["pixel_values"]
    affine = clip_affine(image_processor, int(meta["width"]), int(meta["height"]))
    if (affine.out_h, affine.out_w) != tuple(pv.shape[-2:]) or affine.out_w != grid * patch:
        raise PipelineError(
            f"{meta['image_path']}: processed image is {tuple(pv.shape[-2:])}, expected "
            f"{(affine.out_h, affine.out_w)} from the processor settings and {grid * patch} from the tower")
    mask = text_patch_mask(meta, affine, grid, grid, patch)
    out = clip_outputs(tower, pv, attentions=True)
    if not out.attentions:
        raise PipelineError("the vision tower returned no attentions; it must run with eager attention")
    return pv, affine, mask, out


def feature_layers(model_config, n_layers: int) -> list[int]:
    """The 1-based tower layers whose output the model hands to its language model, read from the model config's
    ``vision_feature_layer``: an index into the tower's hidden states (embeddings first, then each layer's output),
    or a list of them. LLaVA-1.5's -2 is layer 23 of 24. The embeddings (index 0) have no attention: left out."""
    value = getattr(model_config, "vision_feature_layer", None)
    if value is None:
        return []
    layers = set()
    for index in [value] if isinstance(value, int) else value:
        if not -(n_layers + 1) <= int(index) <= n_layers:
            raise PipelineError(f"the model config's vision_feature_layer {value!r} is outside the tower's "
                                f"{n_layers} layers")
        layers.add(int(index) % (n_layers + 1))
    return sorted(layers - {0})


def layer_label(layer: int, n_layers: int, fed: list[int]) -> str:
    """'layer 23 (fed to the LLM)', 'layer 24 (last)': how the figures name a probed layer."""
    roles = (["fed to the LLM"] if layer in fed else []) + (["last"] if layer == n_layers else [])
    return f"layer {layer}" + (f" ({', '.join(roles)})" if roles else "")


def analyse(pairs: pl.DataFrame, tower, image_processor, layers: list[int], fed: list[int]):
    """All numbers for all pairs (at the configured layers, the last and the layers in ``fed``); plus the material
    of the figures."""
    n_layers = tower.config.num_hidden_layers
    bad = [layer for layer in layers if layer > n_layers]
    if bad:
        raise PipelineError(f"analysis.attention.layers: {bad} exceed the tower's {n_layers} layers; use 1..{n_layers}")
    probe = sorted(set(layers) | {n_layers} | set(fed))
    grid, patch = clip_grid(tower)
    rows, examples, diag_rows = [], [], []
    for i, pair in enumerate(pairs.iter_rows(named=True)):
        example = {"sample_id": pair["sample_id"]}
        for variant in VARIANTS:
            meta = row_of(pair, "q_" if variant == "question" else "c_")
            pv, affine, mask, out = encode_image(tower, image_processor, meta)
            maps_by_layer = {}
            for layer in probe:
                stats, maps = attention_stats(out.attentions[layer - 1][0], mask)
                rows.append({"sample_id": pair["sample_id"], "variant": variant, "layer": layer,
                             "is_last_layer": layer == n_layers, "is_feature_layer": layer in fed, **stats})
                maps_by_layer[layer] = maps
            for value, is_text in zip(maps_by_layer[n_layers]["diag"], mask.reshape(-1), strict=True):
                diag_rows.append({"variant": variant, "region": "text" if is_text else "image", "diag": float(value)})
            example[variant] = {"image": display_image(pv, image_processor), "maps": maps_by_layer,
                                "box": affine.box(*(float(meta[k]) for k in ("strip_x0", "strip_y0", "strip_x1",
                                                                               "strip_y1"))),
                                "mask": mask}
        examples.append(example)
        log.info("pair %d/%d %s: %d text-region patches", i + 1, len(pairs), pair["sample_id"],
                 int(example["question"]["mask"].sum()))
    return records_frame(rows), examples, records_frame(diag_rows), grid, patch


def pick_examples(examples: list[dict], n: int) -> list[dict]:
    """The first n pairs whose strip survives the crop (text patches present); others only if too few."""
    with_text = [e for e in examples if e["question"]["mask"].any()]
    rest = [e for e in examples if not e["question"]["mask"].any()]
    return (with_text + rest)[:n]


def plot_attention_maps(examples: list[dict], layers: list[int], labels: dict[int, str], grid: int, patch: int,
                        path) -> None:
    chosen = pick_examples(examples, N_EXAMPLES)
    n_rows, n_cols = 2 * len(chosen), 1 + len(layers)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.1 * n_cols + 0.6, 3.0 * n_rows), squeeze=False)
    side = grid * patch
    for e_i, ex in enumerate(chosen):
        for v_i, variant in enumerate(VARIANTS):
            r = 2 * e_i + v_i
            data = ex[variant]
            ax = axes[r, 0]
            ax.imshow(data["image"], extent=(0, side, side, 0))
            ax.set_title(f"{ex['sample_id']}\n{variant} image (processed)", fontsize=9)
            ax.set_ylabel("pixel row")
            for c_i, layer in enumerate(layers, start=1):
                ax = axes[r, c_i]
                both = np.concatenate([ex[v]["maps"][layer]["cls"] for v in VARIANTS])
                ax.imshow(data["image"], extent=(0, side, side, 0))
                im = ax.imshow(data["maps"][layer]["cls"].reshape(grid, grid), extent=(0, side, side, 0),
                               cmap="inferno", alpha=0.6, vmin=float(both.min()), vmax=float(both.max()),
                               interpolation="nearest")
                ax.set_title(f"{labels[layer]}: CLS→patch attention\n({variant})", fontsize=9)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention")
            for ax in axes[r]:
                x0, y0, x1, y1 = data["box"]
                if x1 > x0 and y1 > y0:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", ls="--", lw=1.2,
                                           label="strip (mapped)"))
                ax.set_xlabel("pixel column")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    fig.suptitle("CLIP vision tower: head-averaged CLS-to-patch attention, question vs control image\n"
                 "(colour scale shared by the question/control pair of each layer; dashed box = text strip)",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def plot_diagonal(diag: pl.DataFrame, examples: list[dict], n_layers: int, grid: int, path) -> None:
    fig, (ax, ax_map) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    groups, labels = [], []
    for region in ("text", "image"):
        for variant in VARIANTS:
            values = diag.filter((pl.col("region") == region) & (pl.col("variant") == variant))["diag"].to_numpy()
            groups.append(values if len(values) else np.array([np.nan]))
            labels.append(f"{region}-region\n{variant} (n={len(values)})")
    box = ax.boxplot(groups, tick_labels=labels, showfliers=False, patch_artist=True)
    colours = ["tab:red", "tab:gray", "tab:blue", "tab:gray"]
    for patch_artist, colour in zip(box["boxes"], colours, strict=True):
        patch_artist.set_facecolor(colour)
        patch_artist.set_alpha(0.5)
    ax.set_ylabel("self-attention A[p, p] (head mean)")
    ax.set_xlabel("patch region, image variant")
    ax.set_title(f"Last layer ({n_layers}) self-attention diagonal per patch, all pairs")
    ex = pick_examples(examples, 1)[0]
    im = ax_map.imshow(ex["question"]["maps"][n_layers]["diag"].reshape(grid, grid), cmap="viridis",
                       interpolation="nearest")
    rows, cols = np.nonzero(ex["question"]["mask"])
    ax_map.scatter(cols, rows, marker="s", s=12, facecolors="none", edgecolors="red", linewidths=0.6,
                   label="text-region patch")
    if len(rows):
        ax_map.legend(loc="upper right", fontsize=8)
    ax_map.set_title(f"{ex['sample_id']} question image: diagonal per patch")
    ax_map.set_xlabel("patch column")
    ax_map.set_ylabel("patch row")
    fig.colorbar(im, ax=ax_map, label="A[p, p]")
    fig.tight_layout()
    save_figure(fig, path)


def run(name: str, entry: dict, layers: list[int], n_pairs: int, seed: int, question_manifest: str,
        control_manifest: str, table_path: str, maps_path: str, diagonal_path: str) -> None:
    """The attention analysis of model ``name`` (entry ``entry``) on ``n_pairs`` question/control pairs of the
    manifests: the table, the attention maps and the diagonal figure."""
    layers_asked, layers = list(layers), sorted(layers)
    torch.manual_seed(seed)
    from pii.inference.vlm import load_image_processor

    # pairs among the samples whose whole strip this CLIP tower is shown (all of them with image_preprocess: pad)
    seen_by = {name: load_image_processor(name, entry)}
    pairs = load_pairs(question_manifest, control_manifest, n_pairs, seen_by)
    loaded = load_vlm(name, entry, attn_implementation="eager")
    tower = families.get(loaded.family).vision_tower(loaded.model)
    tower.eval()
    image_processor = image_processor_of(loaded.processor)
    n_layers = tower.config.num_hidden_layers
    fed = feature_layers(loaded.model.config, n_layers)
    log.info("the model feeds its language model the output of layer(s) %s of %d (vision_feature_layer %r)",
             fed, n_layers, getattr(loaded.model.config, "vision_feature_layer", None))
    table, examples, diag, grid, patch = analyse(pairs, tower, image_processor, layers, fed)
    table = table.select(pl.lit(name, dtype=pl.String).alias("model"), pl.all())
    no_text = table.filter(pl.col("n_text_patches") == 0)["sample_id"].n_unique()
    if no_text:
        log.warning("%d of %d pairs have no text-region patch after the centre crop (strip cropped away)",
                    no_text, len(pairs))
    config = {"analysis.attention": {"model": name, "n_pairs": n_pairs, "layers": layers_asked},
              f"models.{name}": entry, "seed": seed}
    meta = {"model": name, "model_path": entry["path"], "heat_map": "CLS-to-patch attention",
            "text_overlap_threshold": 0.5, "grid": grid, "patch_size": patch, "n_layers": n_layers,
            "vision_feature_layer": getattr(loaded.model.config, "vision_feature_layer", None),
            "feature_layers": fed, "config": config}
    drawn = sorted(set(layers) | set(fed))
    plot_attention_maps(examples, drawn, {layer: layer_label(layer, n_layers, fed) for layer in drawn}, grid, patch,
                        maps_path)
    plot_diagonal(diag, examples, n_layers, grid, diagonal_path)
    write_table(table, table_path, "attention", metadata=meta)
    log.info("wrote %d rows for %d pairs", len(table), len(pairs))
