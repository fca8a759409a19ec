"""Qwen2.5-VL (``Qwen/Qwen2.5-VL-7B-Instruct``): the processor's chat template with its default system message,
the image first in the user turn; with no text part the user turn is
``<|vision_start|><|image_pad|><|vision_end|><|im_end|>``. The vision tower is a windowed ViT with a 2x2 merge."""

from __future__ import annotations

import json
from pathlib import Path

from pii.inference.families.base import CHECKPOINT_FILES, Family, _revision
from pii.inference.families.demo_parts import check_answer_tokens


class Qwen2_5_VL(Family):
    name = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    analyses = frozenset({"layer_similarity", "modality_gap"})
    vision_encoder = "qwen"
    encoder_label = "Qwen2.5-VL ViT"
    demo_reference = "Qwen--Qwen2.5-VL-7B-Instruct"

    def load_processor(self, path: str, revision: str | None = None, model_config=None):
        """AutoProcessor, or the same processor without its video half when torchvision is missing (the video
        processor needs it; images and text behave the same)."""
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(path, **_revision(revision))
        except ImportError as err:
            if "torchvision" not in str(err).lower():
                raise
            processor = _processor_without_video(path, **_revision(revision))
        processor.tokenizer.padding_side = "left"
        return processor

    def vision_tower(self, model):
        inner = getattr(model, "model", model)
        return getattr(inner, "visual", None) or model.visual

    def build_demo(self, out: Path) -> None:
        """The real tokenizer, chat template, processor settings and generation defaults; token ids and vocabulary
        size from the real config; only the dimensions shrunk (ViT: 4 blocks of width 32, windows of 112 px, full
        attention in blocks 2 and 4; language model: 2 layers of width 64, 2 heads of 32, as vLLM's CPU kernel needs)."""
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            GenerationConfig,
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
        )

        ref = CHECKPOINT_FILES / self.demo_reference
        real = json.loads((ref / "config.json").read_text(encoding="utf-8"))
        tok = AutoTokenizer.from_pretrained(ref)
        check_answer_tokens(tok, self.name)
        template = json.loads((ref / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
        ids = {k: real[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                    "vision_end_token_id")}
        config = Qwen2_5_VLConfig(
            vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=real["vision_config"]["patch_size"],
                               spatial_merge_size=real["vision_config"]["spatial_merge_size"],
                               temporal_patch_size=real["vision_config"]["temporal_patch_size"],
                               window_size=real["vision_config"]["window_size"], fullatt_block_indexes=[1, 3],
                               initializer_range=0.02),
            text_config=dict(vocab_size=real["vocab_size"], hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                             max_position_embeddings=4096,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                              "mrope_section": [4, 6, 6]},
                             bos_token_id=real["bos_token_id"], eos_token_id=real["eos_token_id"],
                             pad_token_id=tok.pad_token_id),
            tie_word_embeddings=False, **ids,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        # The real generation defaults (near-greedy sampling); the pipeline overrides every knob.
        model.generation_config = GenerationConfig.from_pretrained(ref)
        model.save_pretrained(out)
        # The processor class wants a video processor, which needs torchvision: save its parts (tokenizer with
        # the chat template, image processor) the way Qwen2_5_VLProcessor.save_pretrained lays them out;
        # load_processor assembles the processor from them when torchvision is missing (see DESIGN.md).
        tok.chat_template = template
        tok.save_pretrained(out)
        AutoImageProcessor.from_pretrained(ref).save_pretrained(out)
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
        (out / "processor_config.json").write_text(
            json.dumps({"processor_class": "Qwen2_5_VLProcessor"}, indent=2) + "\n", encoding="utf-8")


def _processor_without_video(path: str, **kwargs):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor with no video processor (it needs torchvision); images and text behave the same."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
    template = tokenizer.chat_template
    local = Path(path) / "chat_template.jinja"
    if local.is_file():
        template = local.read_text(encoding="utf-8")
    return Qwen2_5_VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                        chat_template=template)


FAMILY = Qwen2_5_VL()
