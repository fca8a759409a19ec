"""Tests of the analysis stage: strip box -> patch mapping, Qwen window-order inversion, similarity / gap numbers,
the three stage mains on tiny checkpoints, and the three rules in the demo DAG."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from pii.analysis import encoders
from pii.analysis.encoders import (
    cosine_distance,
    cosine_rows,
    mean_pairwise_cosine_distance,
    patch_overlap,
    processor_to_raster,
    text_patch_mask,
    window_to_processor_order,
    window_to_raster,
)
from pii.core.tables import read_metadata, read_table, write_table
from pii.inference.processor_view import Affine, clip_affine, qwen_affine

# --- processors ----------------------------------------------------------------------------------------------


def clip_processor(side=336, pad=False):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    return LlavaImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_pad=pad)


def qwen_processor(**size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**({"size": size} if size else {}))


def strip_row(width, height, strip_h):
    return {"strip_x0": 0, "strip_y0": height - strip_h, "strip_x1": width, "strip_y1": height}


# --- geometry: hand-computed cases ---------------------------------------------------------------------------


def test_patch_overlap_fractions():
    ov = patch_overlap((0.0, 7.0, 28.0, 28.0), grid_h=2, grid_w=2, patch=14)
    np.testing.assert_allclose(ov, [[0.5, 0.5], [1.0, 1.0]])
    # exactly half is not "more than half"
    row = {"strip_x0": 0, "strip_y0": 7, "strip_x1": 28, "strip_y1": 28}
    mask = text_patch_mask(row, Affine(1, 1, 0, 0, 28, 28), 2, 2, 14)
    assert mask.tolist() == [[False, False], [True, True]]


def test_clip_landscape_resize_and_crop():
    # 640x500, strip y in [476, 500): shortest edge 500 -> 336 (scale 0.672), width int(336*640/500) = 430,
    # crop origin x (430-336)//2 = 47; strip maps to y in [319.87, 336] -> only patch row 23 is > 50% covered.
    ip = clip_processor()
    aff = clip_affine(ip, 640, 500)
    assert (aff.out_w, aff.out_h) == (336, 336)
    assert aff.sx == pytest.approx(430 / 640) and aff.sy == pytest.approx(336 / 500) and aff.tx == -47
    mask = text_patch_mask(strip_row(640, 500, 24), aff, 24, 24, 14)
    assert mask.sum() == 24 and mask[23].all()


def test_clip_portrait_strip_cropped_away():
    # 480x700: width -> 336, height int(336*700/480) = 490, crop origin y (490-336)//2 = 77; the strip
    # y >= 665 maps to >= 388.5 - 77 = 388.5 > 336: the centre crop removes it, no text-region patch.
    aff = clip_affine(clip_processor(), 480, 700)
    assert aff.ty == -77
    assert text_patch_mask(strip_row(480, 700, 35), aff, 24, 24, 14).sum() == 0


def test_llava_pad_to_square():
    # do_pad: 640x500 is padded to 640x640 (image at y offset 70), resized by 336/640: the strip
    # [546, 570) * 0.525 = [286.65, 299.25): row 20 (280-294) is 52.5% covered, row 21 only 37.5%.
    aff = clip_affine(clip_processor(pad=True), 640, 500)
    assert aff.ty == pytest.approx(70 * 0.525) and aff.sx == pytest.approx(0.525)
    mask = text_patch_mask(strip_row(640, 500, 24), aff, 24, 24, 14)
    assert mask.sum() == 24 and mask[20].all()


def test_qwen_smart_resize_grid():
    # 640x500: round(500/28)*28 = 504, round(640/28)*28 = 644 -> grid 36 x 46; strip [476, 500) * 504/500 =
    # [479.8, 504): rows 34 (72.8%) and 35 (100%).
    ip = qwen_processor()
    out = ip(images=[Image.new("RGB", (640, 500), "gray")], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 36, 46]]
    aff = qwen_affine(640, 500, 36, 46, 14)
    mask = text_patch_mask(strip_row(640, 500, 24), aff, 36, 46, 14)
    assert mask.sum() == 2 * 46 and mask[34:].all()


# --- geometry against the processors' pixels -----------------------------------------------------------------


def rendered_pair(width, height, text="Is there a dog in the image?"):
    """A grey picture with a white strip below holding black text (the render stage's layout when importable)."""
    try:
        from pii.render.strip import compose, load_font, plan_strip, resolve_font

        font = load_font(resolve_font("arimo"), 26)
        cfg = {"font_size": 26, "strip_fraction": 0.05, "padding": 8, "line_spacing": 1.15}
        plan = plan_strip(width, height, text, font, cfg)
        image = compose(Image.new("RGB", (width, height), (200, 200, 200)), plan, font, with_text=True)
        strip_h = image.height - height
    except Exception:  # render stage not importable: draw the same layout here
        strip_h = max(40, round(0.05 * height / 0.95))
        image = Image.new("RGB", (width, height + strip_h), "white")
        image.paste(Image.new("RGB", (width, height), (200, 200, 200)))
        ImageDraw.Draw(image).text((8, height + 8), text, fill="black", font=ImageFont.load_default(size=22))
    return image, strip_row(image.width, image.height, strip_h)


def dark_pixels(canvas: np.ndarray) -> np.ndarray:
    """(rows, cols) of pixels dark in all channels; canvas (3, H, W) in [0, 1]."""
    return np.argwhere((canvas < 0.3).all(0))


def unnormalise(x: np.ndarray, ip) -> np.ndarray:
    return x * np.asarray(ip.image_std)[:, None, None] + np.asarray(ip.image_mean)[:, None, None]


@pytest.mark.parametrize("size", [(640, 480), (500, 375), (427, 640), (1000, 300)])
@pytest.mark.parametrize("pad", [False, True])
def test_clip_mapping_matches_processor_pixels(size, pad):
    ip = clip_processor(side=336, pad=pad)
    image, row = rendered_pair(*size)
    canvas = unnormalise(ip(images=image, return_tensors="np")["pixel_values"][0], ip)
    aff = clip_affine(ip, image.width, image.height)
    assert canvas.shape[1:] == (aff.out_h, aff.out_w)
    x0, y0, x1, y1 = aff.box(row["strip_x0"], row["strip_y0"], row["strip_x1"], row["strip_y1"])
    dark = dark_pixels(canvas)
    if y1 - y0 < 1:  # strip cropped away: nothing dark may be left
        assert len(dark) == 0
        return
    assert len(dark) > 0
    assert (dark[:, 0] >= math.floor(y0) - 1).all() and (dark[:, 0] <= math.ceil(y1) + 1).all()
    mask = text_patch_mask(row, aff, 24, 24, 14)
    hits = mask[dark[:, 0] // 14, dark[:, 1] // 14]
    if mask.any():
        assert hits.mean() > 0.5  # most glyph pixels fall in text-region patches


@pytest.mark.parametrize("size", [(640, 480), (427, 640), (300, 300)])
def test_qwen_mapping_matches_processor_pixels(size):
    ip = qwen_processor(shortest_edge=56 * 56, longest_edge=448 * 448)
    image, row = rendered_pair(*size)
    out = ip(images=[image], return_tensors="pt")
    _, gh, gw = out["image_grid_thw"][0].tolist()
    # the flattened patches, back to an image through processor_to_raster (tests that ordering too)
    raster = processor_to_raster(out["pixel_values"], gh, gw, 2).reshape(gh, gw, 3, 2, 14, 14)[:, :, :, 0]
    canvas = unnormalise(raster.permute(2, 0, 3, 1, 4).reshape(3, gh * 14, gw * 14).numpy(), ip)
    reference = unnormalise(ip.resize(np.asarray(image, dtype=np.float32).transpose(2, 0, 1),
                                      size=ip.size, resample=ip.resample, factor=28) / 255.0, ip)
    assert canvas.shape == reference.shape  # same canvas as a direct resize
    aff = qwen_affine(image.width, image.height, gh, gw, 14)
    x0, y0, x1, y1 = aff.box(row["strip_x0"], row["strip_y0"], row["strip_x1"], row["strip_y1"])
    dark = dark_pixels(canvas)
    assert len(dark) > 0
    assert (dark[:, 0] >= math.floor(y0) - 1).all()
    mask = text_patch_mask(row, aff, gh, gw, 14)
    assert mask[dark[:, 0] // 14, dark[:, 1] // 14].mean() > 0.5


# --- Qwen window order ---------------------------------------------------------------------------------------


def tiny_qwen_visual(depth=2, window_size=56):
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cfg = Qwen2_5_VLConfig(vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2,
                                              out_hidden_size=24, patch_size=14, spatial_merge_size=2,
                                              window_size=window_size, fullatt_block_indexes=[depth - 1],
                                              initializer_range=0.02)).vision_config
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).eval()


def test_window_inversion_matches_transformers_merger():
    visual = tiny_qwen_visual()
    ip = qwen_processor(shortest_edge=56 * 56, longest_edge=448 * 448)
    out = ip(images=[Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 230, 3), dtype=np.uint8))],
             return_tensors="pt")
    grid = out["image_grid_thw"]
    window_index = encoders.qwen_window_index(visual, grid)
    assert not torch.equal(window_index, torch.arange(len(window_index)))  # several windows: order really differs
    captured = []
    hook = visual.blocks[-1].register_forward_hook(lambda _m, _i, o: captured.append(o))
    with torch.no_grad():
        result = visual(out["pixel_values"], grid_thw=grid)
        hook.remove()
        # transformers merges in window order and reverses itself; our inversion first, then the merger
        ours = visual.merger(window_to_processor_order(captured[0], window_index, 4))
    torch.testing.assert_close(ours, result.pooler_output)
    # qwen_block_states returns every block in raster order, the last one equal to the hooked one inverted
    states = encoders.qwen_block_states(visual, out["pixel_values"], grid)
    _, gh, gw = grid[0].tolist()
    assert len(states) == 2 and states[-1].shape == (gh * gw, 32)
    torch.testing.assert_close(states[-1], window_to_raster(captured[0], window_index, gh, gw, 2))


def test_processor_to_raster_small_grid():
    # grid 2 x 4, merge 2: processor order is unit (0,0): (0,0),(0,1),(1,0),(1,1); unit (0,1): (0,2),(0,3),...
    raster_ids = torch.tensor([0, 1, 4, 5, 2, 3, 6, 7], dtype=torch.float32)[:, None]
    assert processor_to_raster(raster_ids, 2, 4, 2)[:, 0].tolist() == list(range(8))


# --- numbers -------------------------------------------------------------------------------------------------


def test_cosine_and_gap_numbers():
    e = np.eye(4)
    assert cosine_distance(e[0], e[0] * 3) == pytest.approx(0.0)
    assert cosine_distance(e[0], e[1]) == pytest.approx(1.0)
    assert mean_pairwise_cosine_distance(e[:2], e[2:]) == pytest.approx(1.0)
    assert mean_pairwise_cosine_distance(e[:1].repeat(3, 0), e[:1].repeat(2, 0)) == pytest.approx(0.0)
    np.testing.assert_allclose(cosine_rows(e, e), 1.0)
    np.testing.assert_allclose(cosine_rows(e, np.roll(e, 1, axis=1)), 0.0)
    from pii.analysis.modality_gap import gap_numbers, paired_test

    g = gap_numbers(e[:2], e[2:])
    assert g == pytest.approx({"centroid_distance": 1.0, "pairwise_distance": 1.0})
    a = np.linspace(0.1, 0.5, 10)
    t = paired_test(a, a + 0.1, resamples=500, confidence=0.95, seed=0)
    assert t["mean_diff"] == pytest.approx(0.1) and t["ci_low"] == pytest.approx(0.1)
    assert t["p_value"] == pytest.approx(2 / 1024)  # exact Wilcoxon, all 10 differences positive
    assert paired_test(a, a, 100, 0.95, 0)["p_value"] is None


def test_similarity_rows_regions():
    from pii.analysis.layer_similarity import similarity_rows

    q = [torch.eye(4), torch.eye(4)]
    c = [torch.eye(4), torch.roll(torch.eye(4), 1, dims=1)]
    mask = np.array([[False, False], [True, True]])
    rows = pl.DataFrame(similarity_rows("m", "llava", "s1", q, c, mask))
    assert {(r["layer"], r["region"]): r["mean"] for r in rows.iter_rows(named=True)} == {
        (1, "image"): 1.0, (1, "text"): 1.0, (2, "image"): 0.0, (2, "text"): 0.0}
    assert rows["n_patches"].to_list() == [2, 2, 2, 2] and rows["layer_from_end"].to_list() == [1, 1, 0, 0]


def test_feature_layers_from_the_model_config():
    from pii.analysis.attention import feature_layers, layer_label
    from pii.core.stage import PipelineError

    cfg = SimpleNamespace
    assert feature_layers(cfg(vision_feature_layer=-2), 24) == [23]  # LLaVA-1.5: the second-to-last layer
    assert feature_layers(cfg(vision_feature_layer=[-1, 12, 0]), 24) == [12, 24]  # embeddings (0) have no attention
    assert feature_layers(cfg(), 24) == []
    with pytest.raises(PipelineError, match="outside the tower's 24 layers"):
        feature_layers(cfg(vision_feature_layer=-26), 24)
    assert layer_label(23, 24, [23]) == "layer 23 (fed to the LLM)" and layer_label(24, 24, [23]) == "layer 24 (last)"
    assert layer_label(4, 24, [23]) == "layer 4"


def test_attention_stats_regions():
    from pii.analysis.attention import attention_stats

    attn = torch.zeros(2, 5, 5)
    attn[:, 0, 1:3] = 0.5  # CLS attends to patches 0 and 1 (the text region)
    attn[:, 1:, 0] = 0.5
    attn[:, torch.arange(1, 5), torch.arange(1, 5)] = 0.5  # diagonal
    stats, maps = attention_stats(attn, np.array([[True, True], [False, False]]))
    assert stats["n_text_patches"] == 2 and stats["cls_text"] == 0.5 and stats["cls_other"] == 0.0
    assert stats["diag_text"] == 0.5 and stats["recv_text"] == pytest.approx((0.5 + 0.5) / 5)


# --- the stage mains on tiny checkpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from pii.inference.demo_checkpoints import build

    root = tmp_path_factory.mktemp("models")
    return {fam: str(build(fam, root / fam)) for fam in ("qwen2_5_vl", "llava")}


def write_manifests(folder: Path, sizes) -> tuple[Path, Path]:
    rows = {"question": [], "control": []}
    for i, size in enumerate(sizes):
        image, strip = rendered_pair(*size)
        for variant in rows:
            img = image if variant == "question" else image.copy()
            if variant == "control":
                ImageDraw.Draw(img).rectangle((0, strip["strip_y0"], img.width, img.height), fill="white")
            path = folder / f"{variant}_{i}.png"
            img.save(path)
            rows[variant].append({"sample_id": f"pope-{i}", "image_id": i, "variant": variant, "source_path": str(path),
                                  "image_path": str(path), "width": img.width, "height": img.height,
                                  "orig_width": size[0], "orig_height": size[1], **strip,
                                  "text": "q" if variant == "question" else "", "font_file": None,
                                  "font_sha256": None, "font_size": 26, "image_sha256": "x"})
    paths = []
    for variant, data in rows.items():
        paths.append(folder / f"{variant}.parquet")
        write_table(pl.DataFrame(data), paths[-1], "manifest")
    return tuple(paths)


def fake_snakemake(inputs: dict, outputs: dict, **params):
    return SimpleNamespace(input=SimpleNamespace(**inputs), output=SimpleNamespace(**outputs),
                           params=SimpleNamespace(**params), log=[])


def entry(family, path):
    return {"family": family, "path": path, "revision": "main", "dtype": "float32"}


def test_attention_and_similarity_mains(tiny_models, tmp_path):
    import attention  # the rule scripts
    import layer_similarity

    # wide images: LLaVA's centre crop keeps their whole strip (the analyses draw pairs among those only)
    q, c = write_manifests(tmp_path, [(420, 200), (400, 220), (440, 180)])
    llava, qwen = entry("llava", tiny_models["llava"]), entry("qwen2_5_vl", tiny_models["qwen2_5_vl"])
    out = {k: tmp_path / f"att_{k}" for k in ("table", "maps", "diagonal")}
    attention.main(fake_snakemake({"question": str(q), "control": str(c)}, out, model="llava", model_entry=llava,
                                  n_pairs=2, layers=[1, 2], seed=0))
    table = read_table(out["table"], "attention")
    # configured layers, the one LLaVA feeds its language model (vision_feature_layer -2: 3 of 4) and the last
    assert sorted(table["layer"].unique()) == [1, 2, 3, 4]
    assert len(table) == 2 * 2 * 4 and table["is_last_layer"].sum() == 4
    assert table.filter(pl.col("is_feature_layer"))["layer"].unique().to_list() == [3]
    assert read_metadata(out["table"])["feature_layers"] == [3]
    assert read_metadata(out["table"])["heat_map"] == "CLS-to-patch attention"
    assert Image.open(out["maps"]).size[0] > 600 and Image.open(out["diagonal"]).size[0] > 600

    out = {"table": tmp_path / "sim.parquet", "figure": tmp_path / "sim.png"}
    layer_similarity.main(fake_snakemake(
        {"question": str(q), "control": str(c)}, out, models=["qwen", "llava"],
        model_entries={"qwen": qwen, "llava": llava}, n_pairs=3, last_n_layers=3, seed=0))
    sim = read_table(out["table"], "layer_similarity")
    assert set(sim["model"]) == {"qwen", "llava"} and sim["sample_id"].n_unique() == 3
    assert dict(sim.group_by("model").agg(pl.col("layer").max()).iter_rows()) == {"llava": 4, "qwen": 4}
    # the image region only differs from the control through attention to the strip, the text region directly
    text, image = (dict(sim.filter(pl.col("region") == r).group_by("model").agg(pl.col("mean").mean()).iter_rows())
                   for r in ("text", "image"))
    assert text.keys() == image.keys() and all(text[m] < image[m] for m in text)
    assert (sim["mean"].drop_nulls() <= 1 + 1e-6).all()
    assert (sim.filter(pl.col("region") == "text")["n_patches"] > 0).all()  # never a text region of no patches


def test_pairs_are_drawn_among_samples_whose_strip_the_encoder_sees(tiny_models, tmp_path):
    """A portrait image loses its strip to LLaVA's centre crop: it is left out of the pairs, unless the model pads
    to a square first (image_preprocess: pad); Qwen2.5-VL resizes without cropping and sees every strip."""
    from pii.analysis.encoders import load_pairs
    from pii.core.stage import PipelineError
    from pii.inference.vlm import load_image_processor

    q, c = write_manifests(tmp_path, [(420, 200), (200, 300), (440, 180)])
    crop = {"llava": load_image_processor("llava", entry("llava", tiny_models["llava"]))}
    pad = {"llava": load_image_processor("llava", {**entry("llava", tiny_models["llava"]), "image_preprocess": "pad"})}
    qwen = {"qwen": load_image_processor("qwen", entry("qwen2_5_vl", tiny_models["qwen2_5_vl"]))}
    assert load_pairs(q, c, 5, crop)["sample_id"].to_list() == ["pope-0", "pope-2"]
    assert load_pairs(q, c, 5, pad)["sample_id"].to_list() == ["pope-0", "pope-1", "pope-2"]
    assert load_pairs(q, c, 5, {**qwen, **crop})["sample_id"].to_list() == ["pope-0", "pope-2"]
    assert load_pairs(q, c, 5, qwen)["sample_id"].to_list() == ["pope-0", "pope-1", "pope-2"]
    (tmp_path / "portrait").mkdir()
    q1, c1 = write_manifests(tmp_path / "portrait", [(200, 300)])
    with pytest.raises(PipelineError, match="no question image shows its whole strip to \\['llava'\\]"):
        load_pairs(q1, c1, 5, crop)


def test_modality_gap_main(tiny_models, tmp_path):
    import modality_gap  # the rule script

    from pii.inference.vlm import build_prompt, load_model

    qwen = entry("qwen2_5_vl", tiny_models["qwen2_5_vl"])
    # wide images: LLaVA's centre crop keeps their whole strip (the analyses draw pairs among those only)
    q, c = write_manifests(tmp_path, [(420, 200), (400, 220), (440, 180)])
    lm = load_model("qwen", qwen)
    paths = []
    for setting, manifest, text in (("control", c, "Describe this image in detail."), ("prompt_in_image", q, None)):
        man = read_table(manifest)
        rows = [{"sample_id": r["sample_id"], "task": "caption", "model": "qwen", "setting": setting,
                 "image_id": r["image_id"], "question": "Describe this image in detail.", "text_prompt": text,
                 "prompt": build_prompt("qwen2_5_vl", lm.processor, text), "image_path": r["image_path"],
                 "response": "" if r["sample_id"] == "pope-2" else "A dog on a red sofa next to a lamp.",
                 "n_prompt_tokens": 1, "n_response_tokens": 5, "finish_reason": "stop", "seed": 0, "repeat": 0,
                 "p_yes": None}
                for r in man.iter_rows(named=True)]
        paths.append(tmp_path / f"inference_{setting}.parquet")
        write_table(pl.DataFrame(rows, schema_overrides={"p_yes": pl.Float64}), paths[-1], "inference")
    out = {k: tmp_path / f"gap_{k}" for k in ("table", "tests", "pca", "figure")}
    modality_gap.main(fake_snakemake(
        {"captions": [str(p) for p in paths]}, out, model="qwen", model_entry=qwen, n_samples=5,
        conditions=["control", "prompt_in_image"], resamples=200, confidence=0.95, seed=0))
    gap = read_table(out["table"], "modality_gap")
    assert sorted(gap["sample_id"].unique()) == ["pope-0", "pope-1"]  # pope-2 has an empty caption
    assert set(gap["condition"]) == {"A", "B"} and (gap["n_caption_tokens"] > 0).all()
    assert (gap["n_image_tokens"] > 0).all() and gap["centroid_distance"].is_between(0, 2).all()
    tests = read_table(out["tests"], "modality_gap_test")
    assert tests["n"].to_list() == [2, 2]
    assert Image.open(out["pca"]).size[0] > 600 and Image.open(out["figure"]).size[0] > 600


# --- the analyses read what the model computes --------------------------------------------------------------

GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def vision_tower_of(lm):
    from pii.inference import families

    return families.get(lm.family).vision_tower(lm.model)


def captured_outputs(module, run) -> list:
    """Every output of ``module`` while ``run()`` runs (a forward hook)."""
    captured = []
    hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        run()
    finally:
        hook.remove()
    return captured


def test_modality_gap_embeddings_are_the_models_forward(tiny_models):
    """embed() gives the final-layer states of Qwen2.5-VL's own forward over the same ids, with the token types the
    processor returns for prompt + caption (its 3-D RoPE positions of the image tokens)."""
    from pii.analysis import modality_gap
    from pii.inference.vlm import build_prompt, load_model

    lm = load_model("qwen", entry("qwen2_5_vl", tiny_models["qwen2_5_vl"]))
    image, _ = rendered_pair(400, 220)
    prompt = build_prompt("qwen2_5_vl", lm.processor, "Describe this image in detail.")
    caption = "A dog on a red sofa next to a lamp."
    img_emb, cap_emb = modality_gap.embed(lm.model, lm.processor, image, prompt, caption, lm.device)
    whole = lm.processor(text=[prompt + caption], images=[image], return_tensors="pt")
    inputs, n_prompt = modality_gap.gap_inputs(lm.processor, image, prompt, caption)
    assert torch.equal(inputs["input_ids"], whole["input_ids"])  # the same ids, so the same forward pass
    with torch.no_grad():
        hidden = lm.model(**whole, output_hidden_states=True).hidden_states[-1][0]
    is_image = whole["input_ids"][0] == lm.model.config.image_token_id
    assert img_emb.shape == (int(is_image.sum()), hidden.shape[-1]) and len(cap_emb) == len(hidden) - n_prompt
    np.testing.assert_allclose(img_emb, hidden[is_image].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(cap_emb, hidden[n_prompt:].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("preprocess", ["checkpoint", "pad"])
def test_clip_states_are_those_llava_feeds_itself(tiny_models, tmp_path, preprocess):
    """The attention and layer-similarity analyses read the hidden states that LLaVA's vision tower produces inside
    the model's generate (the inference path: same processor, same image loader), to 1e-5: every layer's output,
    hooked there (the tower's own output keeps only the layer the model uses)."""
    from pii.analysis import attention, layer_similarity
    from pii.analysis.encoders import load_vlm
    from pii.inference.processor_view import image_processor_of
    from pii.inference.vlm import build_prompt, generate, load_model, open_image

    llava = {**entry("llava", tiny_models["llava"]), "image_preprocess": preprocess}
    q, _ = write_manifests(tmp_path, [(420, 200)])
    meta = read_table(q).row(0, named=True)
    lm = load_model("llava", llava)
    prompt = build_prompt("llava", lm.processor, "Is there a dog in the image?")
    tower = vision_tower_of(lm)
    inside = {i: [] for i in range(len(tower.encoder.layers) + 1)}  # 0: the embeddings the first layer gets
    hooks = [module.register_forward_hook(lambda _m, _i, out, i=i: inside[i].append(out))
             for i, module in enumerate([tower.pre_layrnorm, *tower.encoder.layers])]
    fed = captured_outputs(tower, lambda: generate(lm, [prompt], [open_image(meta["image_path"])], 2, GREEDY, seed=0))
    for hook in hooks:
        hook.remove()
    assert len(fed) == 1 and all(len(v) == 1 for v in inside.values())  # the image is encoded once, at step one
    expected = [inside[i][0] for i in sorted(inside)]

    analysed = load_vlm("llava", llava, attn_implementation="eager")  # as the attention analysis loads it
    tower = vision_tower_of(analysed)
    processor = image_processor_of(analysed.processor)
    _, _, _, out = attention.encode_image(tower, processor, meta)
    assert len(out.hidden_states) == len(expected) == tower.config.num_hidden_layers + 1
    for ours, theirs in zip(out.hidden_states, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    feature_layer = lm.model.config.vision_feature_layer
    torch.testing.assert_close(out.hidden_states[feature_layer], fed[0].hidden_states[feature_layer], rtol=0, atol=1e-5)
    states, _ = layer_similarity.clip_pair_states(tower, processor, meta)
    for ours, theirs in zip(states, expected[1:], strict=True):
        torch.testing.assert_close(ours, theirs[0, 1:], rtol=0, atol=1e-5)


def test_qwen_vit_states_are_those_inside_the_model(tiny_models, tmp_path):
    """The layer-similarity analysis's Qwen ViT block outputs are the blocks' outputs inside the model's generate
    (hooked there, window order undone), to 1e-5."""
    from pii.analysis import layer_similarity
    from pii.analysis.encoders import qwen_window_index, window_to_raster
    from pii.inference.processor_view import image_processor_of
    from pii.inference.vlm import build_prompt, generate, load_model, open_image

    q, _ = write_manifests(tmp_path, [(420, 200)])
    meta = read_table(q).row(0, named=True)
    lm = load_model("qwen", entry("qwen2_5_vl", tiny_models["qwen2_5_vl"]))
    visual = vision_tower_of(lm)
    image = open_image(meta["image_path"])
    prompt = build_prompt("qwen2_5_vl", lm.processor, "Is there a dog in the image?")
    inside = {i: [] for i in range(len(visual.blocks))}
    hooks = [block.register_forward_hook(lambda _m, _i, out, i=i: inside[i].append(out))
             for i, block in enumerate(visual.blocks)]
    try:
        generate(lm, [prompt], [image], 2, GREEDY, seed=0)
    finally:
        for hook in hooks:
            hook.remove()
    grid = lm.processor(text=[prompt], images=[image], return_tensors="pt")["image_grid_thw"]
    _, gh, gw = grid[0].tolist()
    window_index = qwen_window_index(visual, grid)
    states, _ = layer_similarity.qwen_pair_states(visual, image_processor_of(lm.processor), meta)
    assert len(states) == len(visual.blocks) and all(len(v) == 1 for v in inside.values())
    for i, ours in enumerate(states):
        out = inside[i][0][0] if isinstance(inside[i][0], tuple) else inside[i][0]
        theirs = window_to_raster(out, window_index, gh, gw, visual.config.spatial_merge_size)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# --- the demo DAG --------------------------------------------------------------------------------------------

ANALYSIS_OUTPUTS = ["results/analysis/attention/attention.parquet", "results/analysis/layer_similarity/similarity.parquet",
                    "results/analysis/modality_gap/gap.parquet"]


def test_analysis_rules_in_demo_dag(demo_run):
    """The three analyses as the demo DAG ran them (shared session run of the whole demo)."""
    tmp_path = demo_run
    att = read_table(tmp_path / ANALYSIS_OUTPUTS[0], "attention")
    assert att["sample_id"].n_unique() == 6 and sorted(att["layer"].unique()) == [1, 2, 3, 4]
    sim = read_table(tmp_path / ANALYSIS_OUTPUTS[1], "layer_similarity")
    assert set(sim["model"]) == {"qwen2_5_vl", "llava_1_5"}
    gap = read_table(tmp_path / ANALYSIS_OUTPUTS[2], "modality_gap")
    assert set(gap["condition"]) == {"A", "B"}
    for png in ("attention/attention_maps.png", "attention/diagonal.png", "layer_similarity/layer_similarity.png",
                "modality_gap/pca.png", "modality_gap/gap.png"):
        assert (tmp_path / "results/analysis" / png).stat().st_size > 10_000
