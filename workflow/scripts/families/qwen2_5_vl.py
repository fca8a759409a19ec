"""Qwen2.5-VL (``Qwen/Qwen2.5-VL-7B-Instruct``): the processor's chat template with its default system message,
the image first in the user turn; with no text part the user turn is
``<|vision_start|><|image_pad|><|vision_end|><|im_end|>``. The vision tower is a windowed ViT with a 2x2 merge."""

from __future__ import annotations

import json
from pathlib import Path

from families.base import Family, _revision
from families.demo_parts import QWEN_SPECIALS, check_answer_tokens, qwen_tokenizer

# Qwen2.5-VL's chat template: a default system message when none is given, images as
# <|vision_start|><|image_pad|><|vision_end|> in place inside the user turn (written from the model card's format).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen2_5_VL(Family):
    name = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    analyses = frozenset({"layer_similarity", "modality_gap"})
    vision_encoder = "qwen"
    encoder_label = "Qwen2.5-VL ViT"

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
        from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tok = qwen_tokenizer()
        tok.chat_template = QWEN_CHAT_TEMPLATE
        check_answer_tokens(tok, self.name)
        ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
        config = Qwen2_5_VLConfig(
            vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[1, 3], initializer_range=0.02),
            text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                              "mrope_section": [2, 3, 3]},
                             bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                             pad_token_id=ids["<|endoftext|>"]),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        # Like the real checkpoint, the saved generation defaults are near-greedy sampling; the pipeline overrides
        # them.
        model.generation_config = GenerationConfig(
            bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=True, temperature=0.1, top_k=1,
            top_p=0.001, repetition_penalty=1.05)
        model.save_pretrained(out)
        # 224x224 at most: 16x16 patches, 8x8 merged tokens, four 112-px attention windows.
        image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224})
        # The processor class wants a video processor, which needs torchvision: save its parts (tokenizer with
        # the chat template, image processor) the way Qwen2_5_VLProcessor.save_pretrained lays them out;
        # load_processor assembles the processor from them when torchvision is missing (see DESIGN.md).
        tok.save_pretrained(out)
        image_processor.save_pretrained(out)
        (out / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE, encoding="utf-8")
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
