"""Stage analysis / rule modality_gap: the distance between image tokens and caption tokens in Qwen2.5-VL's
final layer, with the instruction given as text (condition A) or rendered into the image (condition B).

The captions are the caption task's inference outputs of decoding repeat 0
(``results/inference/caption/<model>/<setting>/r0.parquet``: what the model wrote under each setting, the same
text CHAIR scores; one caption per sample and condition, so adding repeats never reruns this analysis):
condition A = the first setting of ``analysis.modality_gap.conditions`` (default ``control``: control image + the
caption instruction as text), condition B = the second (default ``prompt_in_image``: question image, no text).
Per sample and condition, one forward pass over chat prompt (rebuilt by ``vlm.build_prompt`` from the row's
``text_prompt``, as inference built it) + caption tokens, with the processor's token types so that the image
tokens get the model's 3-D RoPE positions (``gap_inputs``); the final layer's output (after the final norm,
``last_hidden_state``) at the ``<|image_pad|>`` positions and at the caption positions gives
- ``centroid_distance``: 1 - cos(mean image-token embedding, mean caption-token embedding),
- ``pairwise_distance``: mean of 1 - cos over all (image token, caption token) pairs.
Conditions are compared on the samples present in both: Wilcoxon signed-rank test on B - A and the mean
difference with a percentile bootstrap interval.
"""

import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from pii.analysis.encoders import cosine_distance, load_vlm, mean_pairwise_cosine_distance  # noqa: E402
from pii.core.stage import PipelineError, log
from pii.core.tables import read_table, records_frame, save_figure, write_table
from pii.inference.vlm import build_prompt, open_image  # noqa: E402

CONDITIONS = ("A", "B")
MEASURES = ("centroid_distance", "pairwise_distance")


def gap_numbers(image_emb: np.ndarray, caption_emb: np.ndarray) -> dict:
    return {"centroid_distance": cosine_distance(image_emb.mean(0), caption_emb.mean(0)),
            "pairwise_distance": mean_pairwise_cosine_distance(image_emb, caption_emb)}


def paired_test(a: np.ndarray, b: np.ndarray, resamples: int, confidence: float, seed: int) -> dict:
    """B - A on paired samples: mean difference, percentile bootstrap interval, Wilcoxon signed-rank test."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = diff.size
    out = {"n": int(n), "mean_a": float(np.mean(a)) if n else None, "mean_b": float(np.mean(b)) if n else None,
           "mean_diff": float(diff.mean()) if n else None, "ci_low": None, "ci_high": None,
           "wilcoxon_statistic": None, "p_value": None}
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(resamples, n))].mean(1)
    alpha = (1.0 - confidence) / 2.0
    out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
    if n >= 2 and np.any(diff != 0):
        res = stats.wilcoxon(diff)
        out["wilcoxon_statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def gap_inputs(processor, image, prompt: str, caption: str) -> tuple[dict, int]:
    """The model inputs of one forward pass over ``prompt`` (with the image) + ``caption``, and the prompt's length
    in tokens. Everything the processor returns is passed on, ``mm_token_type_ids`` included: Qwen2.5-VL builds
    its 3-D RoPE positions of the image tokens from them (transformers 5.23, ``compute_3d_position_ids``) and
    without them silently gives every token a plain sequential position. The caption's tokens are text (type 0)."""
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    if "mm_token_type_ids" not in enc:
        raise PipelineError(f"{type(processor).__name__} returned no mm_token_type_ids; the image tokens would get "
                            "sequential positions instead of the model's 3-D RoPE. Use the checkpoint's own processor")
    cap_ids = processor.tokenizer(caption, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_prompt = enc["input_ids"].shape[1]
    inputs = dict(enc)
    inputs["input_ids"] = torch.cat([enc["input_ids"], cap_ids], dim=1)
    inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(cap_ids)], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs, n_prompt


@torch.no_grad()
def embed(model, processor, image, prompt: str, caption: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Final-layer embeddings (float32, after the final norm) of the image tokens and of the caption tokens after
    ``prompt``."""
    inputs, n_prompt = gap_inputs(processor, image, prompt, caption)
    dtype = next(model.parameters()).dtype
    inputs = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
              for k, v in inputs.items()}
    inner = getattr(model, "model", model)
    hidden = inner(**inputs).last_hidden_state[0].float().cpu()
    image_pos = inputs["input_ids"][0].cpu() == model.config.image_token_id
    if not image_pos.any():
        raise PipelineError("no <|image_pad|> token in the prompt; the processor did not expand the image")
    return hidden[image_pos].numpy(), hidden[n_prompt:].numpy()


def select_rows(frames: dict[str, pl.DataFrame], n: int) -> list[str]:
    """The first n sample_ids (sorted) with a usable caption (non-empty, not an error) under both conditions."""
    ok = None
    for cond, df in frames.items():
        good = {sid for sid, finish, response in df.select("sample_id", "finish_reason", "response").iter_rows()
                if finish != "error" and (response or "").strip()}
        dropped = len(df) - len(good)
        if dropped:
            log.warning("condition %s: %d captions empty or failed, left out", cond, dropped)
        ok = good if ok is None else ok & good
    ids = sorted(ok or [])[:n]
    if not ids:
        raise PipelineError("no sample has a non-empty caption under both conditions; check the caption inference "
                            "outputs (results/inference/caption/<model>/<setting>/r0.parquet)")
    if len(ids) < n:
        log.warning("only %d samples with captions under both conditions, %d requested", len(ids), n)
    return ids


def pca_2d(*arrays: np.ndarray) -> list[np.ndarray]:
    """Project all arrays on the first two principal components of their union."""
    stacked = np.concatenate(arrays, axis=0)
    mean = stacked.mean(0)
    _, _, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    comps = vt[:2]
    if comps.shape[0] < 2:
        comps = np.vstack([comps, np.zeros_like(comps[:1])])
    return [(a - mean) @ comps.T for a in arrays]


def plot_pca(example: dict, path) -> None:
    arrays = [example[c][k] for c in CONDITIONS for k in ("image", "caption")]
    proj = pca_2d(*arrays)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharex=True, sharey=True)
    for c_i, (ax, cond) in enumerate(zip(axes, CONDITIONS, strict=True)):
        img, cap = proj[2 * c_i], proj[2 * c_i + 1]
        ax.scatter(img[:, 0], img[:, 1], s=8, alpha=0.5, c="tab:blue", label=f"image tokens (n={len(img)})")
        ax.scatter(cap[:, 0], cap[:, 1], s=12, alpha=0.7, c="tab:orange", marker="^",
                   label=f"caption tokens (n={len(cap)})")
        for pts, colour in ((img, "navy"), (cap, "darkred")):
            ax.scatter(*pts.mean(0), s=140, c=colour, marker="X", edgecolors="white")
        ax.set_title(f"condition {cond}: {example[cond]['label']}\n"
                     f"centroid cosine distance {example[cond]['centroid_distance']:.3f}", fontsize=10)
        ax.set_xlabel("PC 1")
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel("PC 2")
    fig.suptitle(f"PCA of final-layer token embeddings, {example['sample_id']} (shared axes; X = centroid)")
    fig.tight_layout()
    save_figure(fig, path)


def paired_values(table: pl.DataFrame, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """(condition A, condition B) values of one measure, one per sample_id (sorted), NaN where a condition has
    none."""
    value = {(r["sample_id"], r["condition"]): r[measure] for r in table.iter_rows(named=True)}
    ids = sorted({sid for sid, _ in value})
    return tuple(np.array([np.nan if value.get((sid, cond)) is None else value[(sid, cond)] for sid in ids],
                          dtype=float) for cond in CONDITIONS)


def _numbers(row: dict) -> SimpleNamespace:
    """A tests row with attribute access, a missing number as NaN."""
    return SimpleNamespace(**{k: math.nan if v is None else v for k, v in row.items()})


def plot_gap(table: pl.DataFrame, tests: pl.DataFrame, labels: dict, path) -> None:
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 4.8), squeeze=False)
    n_samples = table["sample_id"].n_unique()
    for ax, measure in zip(axes[0], MEASURES, strict=True):
        a, b = paired_values(table, measure)
        for va, vb in zip(a, b, strict=True):
            ax.plot([0, 1], [va, vb], c="gray", alpha=0.5, lw=0.8)
        ax.scatter(np.zeros_like(a), a, c="tab:blue", zorder=3, label="per sample")
        ax.scatter(np.ones_like(b), b, c="tab:orange", zorder=3)
        ax.plot([0, 1], [np.nanmean(a), np.nanmean(b)], c="black", lw=2.2, marker="D", label="mean")
        t = _numbers(tests.filter(pl.col("measure") == measure).row(0, named=True))
        ci = ("n/a" if math.isnan(t.ci_low) else f"[{t.ci_low:+.3f}, {t.ci_high:+.3f}]")
        p = "n/a" if math.isnan(t.p_value) else f"{t.p_value:.3g}"
        ax.set_title(f"{measure.replace('_', ' ')}\nB - A = {t.mean_diff:+.3f}, 95% CI {ci}, Wilcoxon p = {p}",
                     fontsize=10)
        ax.set_xticks([0, 1], [f"A: {labels['A']}", f"B: {labels['B']}"])
        ax.set_xlim(-0.4, 1.4)
        ax.set_ylabel("cosine distance (image vs caption tokens)")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Modality gap per sample, instruction as text (A) vs in the image (B), n = {n_samples}")
    fig.tight_layout()
    save_figure(fig, path)


def run(name: str, entry: dict, conditions: list[str], n_samples: int, resamples: int, confidence: float, seed: int,
        caption_files: list[str], table_path: str, tests_path: str, pca_path: str, figure_path: str) -> None:
    """The modality gap of model ``name`` between the captions of two settings (``conditions``: A, then B, their
    inference files in ``caption_files``): the per-sample table, the paired tests and both figures."""
    settings = dict(zip(CONDITIONS, conditions, strict=True))
    torch.manual_seed(seed)
    frames = {cond: read_table(path, "inference") for cond, path in zip(CONDITIONS, caption_files,
                                                                          strict=True)}
    ids = select_rows(frames, n_samples)
    loaded = load_vlm(name, entry)
    model, processor = loaded.model, loaded.processor
    model.eval()
    device = next(model.parameters()).device
    by_id = {cond: {r["sample_id"]: r for r in df.iter_rows(named=True)} for cond, df in frames.items()}
    rows, example = [], None
    warned = False
    for i, sample_id in enumerate(ids):
        for cond in CONDITIONS:
            row = by_id[cond][sample_id]
            prompt = build_prompt(loaded.family, processor, row["text_prompt"])
            if prompt != row["prompt"] and not warned:
                log.warning("%s: rebuilt prompt differs from the inference row's prompt; using the rebuilt one",
                            sample_id)
                warned = True
            image = open_image(row["image_path"])
            img_emb, cap_emb = embed(model, processor, image, prompt, row["response"], device)
            if len(cap_emb) == 0:
                raise PipelineError(f"{sample_id} ({settings[cond]}): caption has no tokens")
            numbers = gap_numbers(img_emb, cap_emb)
            rows.append({"model": name, "sample_id": sample_id, "condition": cond, "setting": settings[cond],
                         "image_path": row["image_path"], "n_image_tokens": len(img_emb),
                         "n_caption_tokens": len(cap_emb), **numbers})
            if example is None or example["sample_id"] == sample_id:
                example = example or {"sample_id": sample_id}
                example[cond] = {"image": img_emb, "caption": cap_emb, "label": settings[cond], **numbers}
        log.info("sample %d/%d %s done", i + 1, len(ids), sample_id)
    table = records_frame(rows)
    tests = records_frame([{"model": name, "measure": m, **paired_test(*paired_values(table, m),
                                                                        resamples, confidence, seed)}
                           for m in MEASURES])
    for t in map(_numbers, tests.iter_rows(named=True)):
        log.info("%s: A %.4f B %.4f diff %+.4f CI [%s, %s] p=%s", t.measure, t.mean_a, t.mean_b, t.mean_diff,
                 t.ci_low, t.ci_high, t.p_value)
    plot_pca(example, pca_path)
    plot_gap(table, tests, settings, figure_path)
    config = {"analysis.modality_gap": {"model": name, "n_samples": n_samples, "conditions": list(conditions),
                                        "bootstrap_resamples": resamples, "confidence": confidence},
              f"models.{name}": entry, "seed": seed}
    meta = {"model": name, "model_path": entry["path"], "conditions": settings,
            "embedding": "last_hidden_state (final layer, after the final norm)", "config": config}
    write_table(tests, tests_path, "modality_gap_test", metadata=meta)
    write_table(table, table_path, "modality_gap", metadata=meta)
