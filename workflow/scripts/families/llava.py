"""LLaVA-1.5 as llava-hf ships it (``llava-hf/llava-1.5-7b-hf``): the chat template gives
``USER: <image>\\n{text} ASSISTANT:``, and ``USER: <image>\\nASSISTANT:`` with no text part (the template adds a
space only after a text part). The vision tower is CLIP ViT-L/14 (CLS token, square patch grid, feature layer -2)."""

from __future__ import annotations

from pathlib import Path

from families.base import Family
from families.demo_parts import check_answer_tokens, llama_tokenizer, tiny_llama

# The documented llava-1.5 format, used only if a llava checkpoint ships without a chat template.
LLAVA_FORMAT = "USER: <image>\n{text} ASSISTANT:"

# llava-hf/llava-1.5-*-hf: "USER: <image>\n{text} ASSISTANT:" (images first, then each text part plus a space).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class Llava(Family):
    name = "llava"
    model_class_name = "LlavaForConditionalGeneration"
    analyses = frozenset({"attention", "layer_similarity"})
    vision_encoder = "clip"
    encoder_label = "CLIP ViT (LLaVA)"

    def build_prompt(self, processor, text: str | None) -> str:
        if not getattr(processor, "chat_template", None):
            return LLAVA_FORMAT.format(text=text) if text is not None else "USER: <image>\nASSISTANT:"
        return super().build_prompt(processor, text)

    def vision_tower(self, model):
        inner = getattr(model, "model", model)
        return getattr(inner, "vision_tower", None) or model.vision_tower

    def build_demo(self, out: Path) -> None:
        from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        tok = llama_tokenizer(["<image>", "<pad>"])
        tok.pad_token = "<pad>"
        check_answer_tokens(tok, self.name)
        image_size, patch = 112, 14
        config = LlavaConfig(
            # CLIP ViT-L/14 shape family, shrunk: patch 14, CLS token, quick_gelu, pre-LN; 4 layers so the
            # attention analysis can probe layers 1, 2 and 4.
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=4, num_attention_heads=2, image_size=image_size, patch_size=patch,
                               projection_dim=32, hidden_act="quick_gelu"),
            text_config=tiny_llama(len(tok), tok.pad_token_id),
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2, vision_feature_select_strategy="default",
            image_seq_length=(image_size // patch) ** 2, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        )
        model = LlavaForConditionalGeneration(config)
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id)
        model.save_pretrained(out)
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size, "width": image_size})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
        processor.save_pretrained(out)


FAMILY = Llava()
