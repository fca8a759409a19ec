"""Tests of strip_view: what share of the rendered strip each model's real image processor passes on.

The processors are built from the checkpoints' own preprocessor_config.json files (workflow/data/checkpoint_files,
see PROVENANCE.md there). Every number strip_view computes is checked against real pixels: an image whose strip is
painted a distinctive colour goes through the processor, pixel_values are un-normalised (and, for Qwen,
un-patchified), and the strip colour left in the output is counted row by row and column by column.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from pii.core.stage import PipelineError
from pii.inference.processor_view import (
    StripView,
    measured_affine,
    probed_view,
    processor_affine,
    strip_view,
    strip_view_of_row,
)

FIXTURES = Path(__file__).resolve().parent.parent / "workflow" / "data" / "checkpoint_files"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "checkpoint-configs"
QWEN, LLAVA, CLIP = "Qwen--Qwen2.5-VL-7B-Instruct", "llava-hf--llava-1.5-7b-hf", "openai--clip-vit-large-patch14"
SHA256 = {QWEN: "f2058c716eef96ccaed1cc1e2d0c08306b62586d535b28d9d08e691b2fab7ca0",
          LLAVA: "985f577ed7a68659436af90b539af5444f0edc2f96668a2e14801dc3233c9017",
          CLIP: "910e70b3956ac9879ebc90b22fb3bc8a75b6a0677814500101a4c072bd7857bd"}

STRIP_PX, FONT_PX = 34, 26  # a one-line strip as rendered (26 px text, line pitch + padding = 34 px)
SIZES = [(640, 514), (480, 674), (640, 674)]  # landscape, portrait, square-ish; the strip is the last 34 rows
PHOTO = (122, 116, 104)  # the picture part: LLaVA's pad colour, so padding counts as "not strip" exactly
STRIP = (230, 30, 220)  # a colour no resampling of PHOTO can give; inside 0..255 so overshoot is not clipped


# --- the real processors -------------------------------------------------------------------------------------


def config_dir(name: str) -> Path:
    return FIXTURES / name


def llava_crop():
    """llava-1.5-7b-hf as shipped: shortest edge 336, centre crop 336 x 336."""
    return CLIPImageProcessorPil.from_pretrained(config_dir(LLAVA))


def llava_pad():
    """The same config with LLaVA's pad-to-square (the original LLaVA-1.5's expand2square)."""
    return LlavaImageProcessorPil.from_pretrained(config_dir(LLAVA), do_pad=True)


def clip_224():
    return CLIPImageProcessorPil.from_pretrained(config_dir(CLIP))


def qwen():
    return Qwen2VLImageProcessorPil.from_pretrained(config_dir(QWEN))


def instructblip():
    """No InstructBLIP config is available (PROVENANCE.md): BLIP's processor at InstructBLIP's 224 x 224."""
    return BlipImageProcessorPil(size={"height": 224, "width": 224})


PROCESSORS = {"llava_crop": llava_crop, "llava_pad": llava_pad, "clip_224": clip_224, "qwen": qwen,
              "instructblip": instructblip}


# --- measuring real pixels -----------------------------------------------------------------------------------


def painted(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[...] = PHOTO
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = STRIP
    return Image.fromarray(arr, mode="RGB")


def canvas(ip, image: Image.Image, **overrides) -> np.ndarray:
    """Run the processor and return what the encoder gets as (3, H, W) in 0..255 levels."""
    out = ip(images=image, return_tensors="np", **overrides)
    px = np.asarray(out["pixel_values"], dtype=np.float64)
    if "image_grid_thw" in out:  # Qwen: (grid_h * grid_w, C * T * P * P) patches, merge units row-major
        _, gh, gw = (int(v) for v in np.asarray(out["image_grid_thw"])[0])
        p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        px = px.reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
        px = px.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
    else:
        px = px[0]
    mean = np.asarray(ip.image_mean).reshape(3, 1, 1)
    std = np.asarray(ip.image_std).reshape(3, 1, 1)
    return (px * std + mean) / ip.rescale_factor


def strip_share(px: np.ndarray) -> np.ndarray:
    """Per output pixel, how much of it is strip colour (0 photo or padding, 1 strip; linear in between, so sums
    over a line give the strip's extent in output pixels)."""
    a, s = np.asarray(PHOTO, float).reshape(3, 1, 1), np.asarray(STRIP, float).reshape(3, 1, 1)
    d = s - a
    return ((px - a) * d).sum(0) / float((d * d).sum())


def strip_extent(px: np.ndarray) -> tuple[float, float]:
    """(rows, columns) of strip colour in an output canvas, summed down the middle column and along the middle row
    of the pixels that are wholly strip colour; without any such pixel: the largest column sum, and 0 columns."""
    t = strip_share(px)
    core = np.argwhere(np.abs(t - 1.0) < 0.02)
    if not len(core):
        return float(t.sum(axis=0).max()), 0.0
    r, c = (int(v) for v in np.median(core, axis=0))
    return float(t[:, c].sum()), float(t[r].sum())


def measure(name: str, width: int, height: int, box=None) -> dict:
    """What the real processor does with the strip: visible rows / columns of the strip in the output, the
    strip's full extent in output pixels (the same processor with its crop switched off), and the canvas size."""
    ip = PROCESSORS[name]()
    box = box or (0, height - STRIP_PX, width, height)
    image = painted(width, height, box)
    px = canvas(ip, image)
    rows, cols = strip_extent(px)
    full = canvas(ip, image, do_center_crop=False) if getattr(ip, "do_center_crop", False) else px
    full_rows, full_cols = strip_extent(full)
    return {"rows": rows, "cols": cols, "full_rows": full_rows, "full_cols": full_cols,
            "height": px.shape[1], "width": px.shape[2]}


# --- fixtures are the checkpoints' own files -----------------------------------------------------------------


@pytest.mark.parametrize("name", [QWEN, LLAVA, CLIP])
def test_fixture_configs_are_the_recorded_files(name):
    data = (FIXTURES / name / "preprocessor_config.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
    assert SHA256[name] in (FIXTURES / "PROVENANCE.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [QWEN, LLAVA, CLIP])
def test_fixture_configs_match_the_shared_checkpoint_files(name):
    shared = SHARED / name / "preprocessor_config.json"
    if not shared.is_file():
        pytest.skip(f"{SHARED} is absent; the fixtures' SHA-256 values are checked on their own")
    assert shared.read_bytes() == (FIXTURES / name / "preprocessor_config.json").read_bytes()


def test_processors_are_the_checkpoints_settings():
    assert llava_crop().size.shortest_edge == 336 and llava_crop().crop_size.height == 336
    assert llava_crop().do_center_crop and not getattr(llava_crop(), "do_pad", False)
    assert llava_pad().do_pad and llava_pad().do_center_crop
    assert clip_224().size.shortest_edge == 224 and clip_224().crop_size.width == 224
    q = qwen()
    assert (q.size.shortest_edge, q.size.longest_edge, q.patch_size, q.merge_size) == (3136, 12845056, 14, 2)


# --- strip_view against real pixels --------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("name", list(PROCESSORS))
def test_strip_view_agrees_with_real_pixels(name, width, height):
    m = measure(name, width, height)
    v = strip_view(PROCESSORS[name](), width, height, (0, height - STRIP_PX, width, height), FONT_PX)
    assert (v.input_width, v.input_height) == (m["width"], m["height"])
    # the strip's full extent in output rows / columns, i.e. the scale factors
    assert abs(STRIP_PX * v.scale_y - m["full_rows"]) <= 1.0
    assert abs(width * v.scale_x - m["full_cols"]) <= 1.0
    # visible share of the strip: within one output row / column of what came through
    assert abs(v.strip_visible_fraction * STRIP_PX * v.scale_y - m["rows"]) <= 1.0
    assert abs(v.strip_visible_fraction - m["rows"] / m["full_rows"]) <= 1.0 / m["full_rows"]
    if m["cols"] > 0:
        assert abs(v.strip_visible_col_fraction * width * v.scale_x - m["cols"]) <= 1.0
    # text size in the model's pixels: the font scaled as the strip's rows are
    assert abs(v.text_px_in_model - FONT_PX * m["full_rows"] / STRIP_PX) <= FONT_PX / STRIP_PX


def test_llava_crop_loses_the_portrait_strip_and_half_the_square_one():
    land, portrait, square = (strip_view(llava_crop(), w, h, (0, h - STRIP_PX, w, h), FONT_PX) for w, h in SIZES)
    assert land.strip_visible_fraction == 1.0 and land.strip_visible_col_fraction == pytest.approx(336 / 418)
    # portrait 480x674 -> 336x471, crop keeps resized rows 67..403 (file rows ~96..~577): the strip is gone
    assert portrait.strip_visible_fraction == 0.0
    assert measure("llava_crop", 480, 674)["rows"] == pytest.approx(0.0, abs=0.05)
    # square-ish 640x674 -> 336x353, crop keeps resized rows 8..344: file rows up to ~656.8 of 674 survive
    assert square.strip_visible_fraction == pytest.approx((344 / (353 / 674) - 640) / STRIP_PX)
    assert 0.45 < square.strip_visible_fraction < 0.55
    assert (land.input_width, land.input_height) == (336, 336)
    assert land.method == portrait.method == square.method == "clip"


@pytest.mark.parametrize("width,height", SIZES)
def test_pad_to_square_and_whole_image_resizes_keep_the_whole_strip(width, height):
    box = (0, height - STRIP_PX, width, height)
    for name in ("llava_pad", "qwen", "instructblip"):
        v = strip_view(PROCESSORS[name](), width, height, box, FONT_PX)
        assert v.strip_visible_fraction == 1.0 and v.strip_visible_col_fraction == 1.0, name
        m = measure(name, width, height)
        assert m["rows"] == pytest.approx(m["full_rows"], abs=0.05), name


def test_qwen_grid_is_the_processors_own():
    for width, height in SIZES:
        out = qwen()(images=painted(width, height, (0, 0, 1, 1)), return_tensors="np")
        _, gh, gw = (int(x) for x in np.asarray(out["image_grid_thw"])[0])
        v = strip_view(qwen(), width, height, (0, height - STRIP_PX, width, height), FONT_PX)
        assert (v.input_height, v.input_width) == (gh * 14, gw * 14)
        assert v.method == "smart_resize"
    v = strip_view(qwen(), 640, 514, (0, 480, 640, 514), FONT_PX)
    assert (v.input_width, v.input_height) == (644, 504)
    assert v.text_px_in_model == pytest.approx(FONT_PX * 504 / 514)


def test_a_strip_box_narrower_than_the_image_is_measured_the_same_way():
    box = (100, 640, 560, 674)  # a box off-centre in both directions, on the square-ish image
    m = measure("llava_crop", 640, 674, box)
    v = strip_view(llava_crop(), 640, 674, box, FONT_PX)
    assert abs(v.strip_visible_fraction * STRIP_PX * v.scale_y - m["rows"]) <= 1.0
    assert abs(v.strip_visible_col_fraction * (box[2] - box[0]) * v.scale_x - m["cols"]) <= 1.0
    box = (0, 480, 120, 514)  # the left end of a landscape strip: mostly cut off by the centre crop
    m = measure("llava_crop", 640, 514, box)
    v = strip_view(llava_crop(), 640, 514, box, FONT_PX)
    assert 0.0 < v.strip_visible_col_fraction < 0.6
    assert abs(v.strip_visible_col_fraction * 120 * v.scale_x - m["cols"]) <= 1.0


# --- no strip, manifest rows, wrong input --------------------------------------------------------------------


class _NA:
    """Stands in for pandas' NA: no truth value."""

    def __ne__(self, other):
        raise TypeError("boolean value of NA is ambiguous")

    __eq__ = __ne__


@pytest.mark.parametrize("box", [None, (None, None, None, None), (math.nan,) * 4, (_NA(),) * 4])
def test_no_strip_gives_nan_fractions(box):
    v = strip_view(llava_crop(), 640, 480, box, None)
    assert isinstance(v, StripView) and not v.has_strip
    assert math.isnan(v.strip_visible_fraction) and math.isnan(v.strip_visible_col_fraction)
    assert math.isnan(v.text_px_in_model)
    assert (v.input_width, v.input_height) == (336, 336)
    assert strip_view(llava_crop(), 640, 480, box, FONT_PX).text_px_in_model == pytest.approx(FONT_PX * 336 / 480)


def test_manifest_rows():
    manifest = pl.DataFrame({"width": [480, 640], "height": [674, 480], "strip_x0": [0, None],
                             "strip_y0": [640, None], "strip_x1": [480, None], "strip_y1": [674, None],
                             "font_size": [FONT_PX, None]})
    question, original = manifest.row(0, named=True), manifest.row(1, named=True)
    assert strip_view_of_row(llava_crop(), question).strip_visible_fraction == 0.0
    assert strip_view_of_row(qwen(), question).strip_visible_fraction == 1.0
    v = strip_view_of_row(llava_pad(), original)
    assert not v.has_strip and math.isnan(v.text_px_in_model)
    with pytest.raises(PipelineError, match="empty"):
        strip_view(llava_crop(), 640, 480, (0, 480, 640, 480), FONT_PX)


def test_a_full_processor_is_unwrapped():
    wrapped = SimpleNamespace(image_processor=qwen())
    assert strip_view(wrapped, 640, 514, (0, 480, 640, 514), FONT_PX) == strip_view(qwen(), 640, 514,
                                                                                      (0, 480, 640, 514), FONT_PX)


# --- the measured fallback -----------------------------------------------------------------------------------


class UnknownProcessor(CLIPImageProcessorPil):
    """A processor strip_view has no rule for (a subclass may resize differently, so it is measured)."""


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("name", ["llava_crop", "llava_pad", "clip_224", "instructblip"])
def test_measured_geometry_matches_the_rules(name, width, height):
    ip = PROCESSORS[name]()
    rule, _ = processor_affine(ip, width, height)
    got = measured_affine(ip, width, height)
    assert (got.out_w, got.out_h) == (rule.out_w, rule.out_h)
    assert got.sx == pytest.approx(rule.sx, rel=0.005) and got.sy == pytest.approx(rule.sy, rel=0.005)
    assert got.tx == pytest.approx(rule.tx, abs=0.5) and got.ty == pytest.approx(rule.ty, abs=0.5)


@pytest.mark.parametrize("width,height", SIZES)
def test_unknown_processor_is_measured(width, height):
    cfg = json.loads((config_dir(LLAVA) / "preprocessor_config.json").read_text())
    ip = UnknownProcessor(**{k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")})
    box = (0, height - STRIP_PX, width, height)
    v = strip_view(ip, width, height, box, FONT_PX)
    m = measure("llava_crop", width, height)
    assert v.method == "measured"
    assert (v.input_width, v.input_height) == (m["width"], m["height"])
    assert abs(v.strip_visible_fraction * STRIP_PX * v.scale_y - m["rows"]) <= 1.0
    assert abs(v.text_px_in_model - strip_view(llava_crop(), width, height, box, FONT_PX).text_px_in_model) < 0.2


def test_unmeasurable_processor_raises_a_clear_error():
    with pytest.raises(PipelineError, match="not one image"):
        measured_affine(qwen(), 640, 514)


# --- the probe: measured through the processor itself --------------------------------------------------------


def idefics3_demo():
    """The demo's Idefics3 processor (families/hf.py): 112 px long side, 56-px tiles plus a global view."""
    from pii.inference.families.hf import demo_image_processor

    return demo_image_processor()


# The probe's fit is good to a fraction of a canvas pixel; the rules are exact.
CANVAS_PX = 1.0


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("name", ["llava_crop", "llava_pad", "qwen", "instructblip", "clip_224"])
def test_probe_agrees_with_the_rules(name, width, height):
    """The per-processor rules of strip_view are the cross-check of the probe every family uses."""
    ip = PROCESSORS[name]()
    box = (0, height - STRIP_PX, width, height)
    probe, rule = probed_view(ip, width, height, box, FONT_PX), strip_view(ip, width, height, box, FONT_PX)
    assert probe.method == "probe" and probe.n_views == 1
    assert (probe.input_width, probe.input_height) == (rule.input_width, rule.input_height)
    # a whole strip or photo is whole exactly, as by the rule (the groups test for 1.0)
    assert (probe.strip_visible_fraction == 1.0) == (rule.strip_visible_fraction == 1.0)
    assert (probe.strip_visible_fraction == 0.0) == (rule.strip_visible_fraction == 0.0)
    assert (probe.photo_visible_fraction == 1.0) == (rule.photo_visible_fraction == 1.0)
    rows_px, photo_px = STRIP_PX * rule.scale_y, (height - STRIP_PX) * rule.scale_y
    assert abs(probe.strip_visible_fraction - rule.strip_visible_fraction) * rows_px <= CANVAS_PX
    assert abs(probe.strip_visible_col_fraction - rule.strip_visible_col_fraction) * width * rule.scale_x <= CANVAS_PX
    assert abs(probe.photo_visible_fraction - rule.photo_visible_fraction) * photo_px <= CANVAS_PX
    assert abs(probe.photo_visible_area - rule.photo_visible_area) <= 2 * CANVAS_PX / min(rows_px, photo_px)
    assert probe.text_px_in_model == pytest.approx(rule.text_px_in_model, rel=0.005)


def test_the_probe_is_memoised_per_processor_and_size(monkeypatch):
    from pii.inference import processor_view as sv

    ip, calls = llava_crop(), []
    real = sv.processed_views
    monkeypatch.setattr(sv, "processed_views", lambda p, image: calls.append(image.size) or real(p, image))
    for font, box in ((FONT_PX, (0, 480, 640, 514)), (12, (0, 470, 640, 514)), (None, None)):
        probed_view(ip, 640, 514, box, font)
    probed_view(ip, 480, 674, (0, 640, 480, 674), FONT_PX)
    probed_view(llava_crop(), 640, 514, (0, 480, 640, 514), FONT_PX)  # another processor object: its own probe
    assert calls == [(640, 514), (480, 674), (640, 514)]


def test_llava_crop_of_a_tall_canvas_keeps_only_strip():
    """A long question makes a tall strip: the centre crop keeps strip rows only, none of the photo."""
    width, height, strip = 640, 2480, 2000
    box = (0, height - strip, width, height)
    probe, rule = probed_view(llava_crop(), width, height, box, FONT_PX), strip_view(llava_crop(), width, height, box,
                                                                                     FONT_PX)
    assert probe.photo_visible_fraction == rule.photo_visible_fraction == 0.0
    assert 0.3 < probe.strip_visible_fraction < 0.35
    assert abs(probe.strip_visible_fraction - rule.strip_visible_fraction) * strip * rule.scale_y <= CANVAS_PX
    m = measure("llava_crop", width, height, box)
    assert m["rows"] == pytest.approx(336, abs=0.05)  # every row the encoder gets is strip


def test_photo_rows_and_area_of_the_centre_crop():
    """A landscape photo loses its sides to the crop (area), not its rows; the baseline image (no strip) too."""
    strip = probed_view(llava_crop(), 640, 514, (0, 480, 640, 514), FONT_PX)
    assert strip.photo_visible_fraction == 1.0 and strip.photo_visible_area == pytest.approx(336 / 418, abs=0.003)
    baseline = probed_view(llava_crop(), 640, 480, None, None)
    assert math.isnan(baseline.strip_visible_fraction) and math.isnan(baseline.text_px_in_model)
    assert baseline.photo_visible_fraction == 1.0 and baseline.photo_visible_area == pytest.approx(0.75, abs=0.003)
    square = probed_view(llava_crop(), 640, 674, (0, 640, 640, 674), FONT_PX)
    assert 0.97 < square.photo_visible_fraction < 0.98  # the crop's top cut: ~17 of 640 photo rows


def _tiles(ip, image) -> list[np.ndarray]:
    """The views (tiles, then the global view) of a tiling processor in 0..255 levels, padding dropped."""
    out = ip(images=image, return_tensors="np")
    px = np.asarray(out["pixel_values"], dtype=np.float64).reshape(-1, 3, *out["pixel_values"].shape[-2:])
    mask = np.asarray(out["pixel_attention_mask"]).reshape(len(px), *px.shape[-2:]).astype(bool)
    mean, std = np.asarray(ip.image_mean).reshape(3, 1, 1), np.asarray(ip.image_std).reshape(3, 1, 1)
    return [(v * std + mean) / ip.rescale_factor for v, m in zip(px, mask, strict=True) if m.any()]


@pytest.mark.parametrize("width,height", SIZES)
def test_idefics3_tiles_are_measured(width, height):
    """The demo's Idefics3 splits the image into 2 x 2 tiles plus a global view: every view is read back, the strip
    and photo reach the encoder whole, and the text height is that of the tiles (twice the global view's)."""
    ip, box = idefics3_demo(), (0, height - STRIP_PX, width, height)
    v = probed_view(ip, width, height, box, FONT_PX)
    assert v.n_views == 5 and (v.input_width, v.input_height) == (56, 56)
    assert v.strip_visible_fraction == v.strip_visible_col_fraction == v.photo_visible_fraction == 1.0
    # the real pixels: the strip's extent in the bottom tiles and in the global view, from the painted image
    tiles = _tiles(ip, painted(width, height, box))
    assert len(tiles) == 5
    bottom, global_view = strip_extent(tiles[2])[0], strip_extent(tiles[4])[0]
    assert abs(STRIP_PX * v.scale_y - bottom) <= 1.0
    assert bottom == pytest.approx(2 * global_view, abs=1.0)
    assert v.text_px_in_model == pytest.approx(FONT_PX * v.scale_y)
    assert v.text_px_in_model < 8  # the demo's tiny tiles: text of 4-6 px, illegible at the config's threshold


def test_idefics3_at_its_own_default_size_tiles_and_upscales():
    """transformers' Idefics3 defaults (1456 px long side, 364-px tiles, as Idefics3-8B-Llama3 ships them): a
    640 x 514 image is upscaled to 4 x 4 tiles, and the text is about 74 px high in them."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    v = probed_view(Idefics3ImageProcessorPil(), 640, 514, (0, 480, 640, 514), FONT_PX)
    assert v.n_views == 17 and v.strip_visible_fraction == v.photo_visible_fraction == 1.0
    assert v.text_px_in_model == pytest.approx(FONT_PX * 1456 / 514, rel=0.01)  # 514 rows -> 1170 -> 1456


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "instructblip", "hf"])
def test_every_family_measures_through_its_processor(family):
    """Family.strip_geometry (what inference records) is the probe through the family's image processor."""
    from pii.inference import families

    ip = {"llava": llava_crop, "qwen2_5_vl": qwen, "instructblip": instructblip, "hf": idefics3_demo}[family]()
    processor = SimpleNamespace(image_processor=ip)
    got = families.get(family).strip_geometry(processor, 640, 514, (0, 480, 640, 514), FONT_PX)
    assert got == probed_view(ip, 640, 514, (0, 480, 640, 514), FONT_PX)
    assert got.method == "probe" and not math.isnan(got.text_px_in_model)
