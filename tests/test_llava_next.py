"""The LLaVA-NeXT family (``families/llava_next.py``): its tiny demo checkpoint loads and generates through the
project's normal path, the prompt is the model card's, the image tokens are what the model itself computes, and its
anyres tiling passes the whole strip on (strip_geometry reads the stack of tiles)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from pii.inference import families, vlm
from pii.inference.processor_view import probed_view

QUESTION = "Is there a dog in the image?"
STRIP_H = 40
FONT_PX = 12
# (width, height) of the photo: a portrait one, whose strip LLaVA-1.5's centre crop cuts off, and a landscape one
PHOTOS = [(160, 240), (300, 180)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("llava_next") / "model"
    torch.manual_seed(0)
    families.get("llava_next").build_demo(out)
    return vlm.load_model("llava_next", {"family": "llava_next", "path": str(out), "dtype": "float32"}, device="cpu")


def with_strip(width: int, height: int, text: str | None) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A photo with a white strip below it (the question drawn in it, or blank for the control), and the strip box."""
    image = Image.new("RGB", (width, height + STRIP_H), "white")
    image.paste(Image.new("RGB", (width, height), (90, 140, 60)))
    if text:
        ImageDraw.Draw(image).text((4, height + 10), text, fill="black")
    return image, (0, height, width, height + STRIP_H)


def test_registered_with_its_class():
    family = families.get("llava_next")
    assert family.model_class_name == "LlavaNextForConditionalGeneration"
    assert family.analyses == frozenset() and not family.supports_pad


def test_prompt_is_the_model_cards(lm):
    assert vlm.build_prompt("llava_next", lm.processor, QUESTION) == f"USER: <image>\n{QUESTION} ASSISTANT:"
    assert vlm.build_prompt("llava_next", lm.processor, None) == "USER: <image>\nASSISTANT:"


def test_generates_and_counts_the_models_image_tokens(lm):
    images = [with_strip(w, h, QUESTION)[0] for w, h in PHOTOS] + [with_strip(w, h, None)[0] for w, h in PHOTOS]
    prompts = [vlm.build_prompt("llava_next", lm.processor, None)] * 2 + \
        [vlm.build_prompt("llava_next", lm.processor, QUESTION)] * 2
    inputs = vlm.prepare_inputs(lm, prompts, images)
    assert "image_sizes" in inputs and inputs["pixel_values"].dim() == 5  # one stack of tiles per image
    with torch.inference_mode():
        features = lm.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], vision_feature_layer=lm.model.config.vision_feature_layer,
            vision_feature_select_strategy=lm.model.config.vision_feature_select_strategy).pooler_output
    in_ids = (inputs["input_ids"] == lm.model.config.image_token_index).sum(dim=1).tolist()
    assert in_ids == [f.shape[0] for f in features]
    assert in_ids == [vlm.image_tokens(lm, im.width, im.height) for im in images]
    results = vlm.generate(lm, prompts, images, 4, {"do_sample": False, "repetition_penalty": 1.0}, seed=0,
                           want_p_yes=True)
    assert [r["n_response_tokens"] for r in results] == [4] * 4
    assert all(0.0 < r["p_yes"] < 1.0 for r in results)


@pytest.mark.parametrize("width, height", PHOTOS)
def test_tiles_show_the_whole_strip(lm, width, height):
    """The base view squashes the whole image into one tile and the tiles cover the rest, so every strip row and
    column and the whole photo reach the encoder; the text is largest in the tiles."""
    _, box = with_strip(width, height, QUESTION)
    family = families.get("llava_next")
    view = family.strip_geometry(lm.processor, width, height + STRIP_H, box, FONT_PX)
    assert view.n_views > 1 and view.method == "probe"
    assert view.strip_visible_fraction == 1.0 and view.strip_visible_col_fraction == 1.0
    assert view.photo_visible_fraction == 1.0 and view.photo_visible_area == 1.0
    tile = lm.processor.image_processor.crop_size["height"]
    base_scale = tile / (height + STRIP_H)  # the base view's vertical scale
    assert view.text_px_in_model > FONT_PX * base_scale
    assert view == probed_view(lm.processor.image_processor, width, height + STRIP_H, box, FONT_PX)
