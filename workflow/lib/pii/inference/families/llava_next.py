"""LLaVA-NeXT (LLaVA-1.6) as llava-hf ships it, e.g. ``llava-hf/llava-v1.6-vicuna-7b-hf``: CLIP ViT-L/14-336 and
Vicuna, like LLaVA-1.5, but with "anyres" tiling. The image processor picks the grid resolution of
``image_grid_pinpoints`` that fits the image best, resizes the image into it keeping its aspect ratio (padding the
rest), cuts it into crop-size tiles and adds the whole image squashed to one tile as a base view. Nothing is centre
cropped, so the strip below the photo always reaches the encoder, at a higher resolution than LLaVA-1.5's.

The model card's prompt for the Vicuna checkpoints is LLaVA-1.5's, ``USER: <image>\\n{text} ASSISTANT:``; the
checkpoint's own chat template is used when it ships one. The encoder analyses do not run on this family (its tower
sees a stack of tiles per image, which they do not read)."""

from __future__ import annotations

import json
from pathlib import Path

from pii.inference.families.base import CHECKPOINT_FILES, Family
from pii.inference.families.demo_parts import check_answer_tokens, tiny_llama
from pii.inference.families.llava import LLAVA_FORMAT, hub_weight_names

# transformers' defaults for LlavaNextImageProcessor / LlavaNextConfig (336-px tiles, up to 2 x 2 or 1 x 3), which
# the demo scales down to its tile size.
REAL_TILE = 336
REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
DEMO_TILE = 56  # px: the demo tower's input size (4 x 4 patches of 14 px)


class LlavaNext(Family):
    name = "llava_next"
    model_class_name = "LlavaNextForConditionalGeneration"
    # No llava-v1.6 files are stored; the demo takes the Vicuna tokenizer, chat template and token ids of
    # llava-1.5 (the same tokenizer family) and transformers' LLaVA-NeXT image processor defaults.
    demo_reference = "llava-hf--llava-1.5-7b-hf"

    def build_prompt(self, processor, text: str | None) -> str:
        if not getattr(processor, "chat_template", None):
            return LLAVA_FORMAT.format(text=text) if text is not None else "USER: <image>\nASSISTANT:"
        return super().build_prompt(processor, text)

    def build_demo(self, out: Path) -> None:
        """llava-1.5's tokenizer, chat template, token ids and generation config; a LLaVA-NeXT image processor with
        transformers' defaults scaled from 336-px to 56-px tiles (pinpoints scaled alike); a 4-layer CLIP tower of
        width 32 at 56 px (patch 14, CLS, feature layer -2) and a 2-layer language model."""
        from transformers import (
            AutoProcessor,
            GenerationConfig,
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextProcessor,
        )
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        ref = CHECKPOINT_FILES / self.demo_reference
        real = json.loads((ref / "config.json").read_text(encoding="utf-8"))
        reference = AutoProcessor.from_pretrained(ref)
        tok = reference.tokenizer
        check_answer_tokens(tok, self.name)
        patch = real["vision_config"]["patch_size"]
        pinpoints = [[h * DEMO_TILE // REAL_TILE, w * DEMO_TILE // REAL_TILE] for h, w in REAL_PINPOINTS]
        # The PIL backend: the torchvision one is not installed in the demo's environment.
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": DEMO_TILE}, crop_size={"height": DEMO_TILE, "width": DEMO_TILE},
            image_grid_pinpoints=pinpoints, image_mean=reference.image_processor.image_mean,
            image_std=reference.image_processor.image_std)
        config = LlavaNextConfig(
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=4, num_attention_heads=2, image_size=DEMO_TILE, patch_size=patch,
                               projection_dim=32, hidden_act=real["vision_config"].get("hidden_act", "quick_gelu")),
            text_config=tiny_llama(real["vocab_size"], real["pad_token_id"]),
            image_token_index=real["image_token_index"], vision_feature_layer=real["vision_feature_layer"],
            vision_feature_select_strategy=real["vision_feature_select_strategy"], image_grid_pinpoints=pinpoints,
            image_seq_length=(DEMO_TILE // patch) ** 2, pad_token_id=real["pad_token_id"], tie_word_embeddings=False,
        )
        model = LlavaNextForConditionalGeneration(config)
        model.generation_config = GenerationConfig.from_pretrained(ref)
        model.save_pretrained(out)
        hub_weight_names(out / "model.safetensors")
        processor = LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=patch,
            vision_feature_select_strategy=real["vision_feature_select_strategy"],
            num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
            chat_template=reference.chat_template)
        processor.save_pretrained(out)


FAMILY = LlavaNext()
