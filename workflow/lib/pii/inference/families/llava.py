"""LLaVA-1.5 as llava-hf ships it (``llava-hf/llava-1.5-7b-hf``): the chat template gives
``USER: <image>\\n{text} ASSISTANT:``, and ``USER: <image>\\nASSISTANT:`` with no text part (the template adds a
space only after a text part). The vision tower is CLIP ViT-L/14 (CLS token, square patch grid, feature layer -2)."""

from __future__ import annotations

import json
from pathlib import Path

from pii.inference.families.base import CHECKPOINT_FILES, Family
from pii.inference.families.demo_parts import check_answer_tokens, tiny_llama

# The documented llava-1.5 format, used only if a llava checkpoint ships without a chat template.
LLAVA_FORMAT = "USER: <image>\n{text} ASSISTANT:"

class Llava(Family):
    name = "llava"
    model_class_name = "LlavaForConditionalGeneration"
    analyses = frozenset({"attention", "layer_similarity"})
    vision_encoder = "clip"
    encoder_label = "CLIP ViT (LLaVA)"
    demo_reference = "llava-hf--llava-1.5-7b-hf"
    supports_pad = True

    def build_prompt(self, processor, text: str | None) -> str:
        if not getattr(processor, "chat_template", None):
            return LLAVA_FORMAT.format(text=text) if text is not None else "USER: <image>\nASSISTANT:"
        return super().build_prompt(processor, text)

    def pad_to_square(self, processor) -> None:
        """The original LLaVA-1.5 evaluation (``image_aspect_ratio: pad``): expand the image to a square filled
        with the processor's mean colour, then resize and crop as the checkpoint does, so no part of the image
        (nor the strip below it) is cropped away. transformers' LLaVA image processor does this with
        ``do_pad=True``; the checkpoint's own settings are kept."""
        import transformers

        current = processor.image_processor
        settings = {k: v for k, v in current.to_dict().items()
                    if not k.startswith("_") and k not in ("image_processor_type", "processor_class")}
        pil = type(current).__name__.endswith("Pil")
        cls = transformers.LlavaImageProcessorPil if pil else transformers.LlavaImageProcessor
        processor.image_processor = cls(**{**settings, "do_pad": True})

    def vision_tower(self, model):
        inner = getattr(model, "model", model)
        return getattr(inner, "vision_tower", None) or model.vision_tower

    def build_demo(self, out: Path) -> None:
        """The real processor (tokenizer, chat template, CLIP image processor at 336 px with centre crop), token
        ids and vocabulary size; CLIP ViT-L/14's shape at its real input size (patch 14, CLS token, quick_gelu,
        feature layer -2) shrunk to 4 layers of width 32, so the attention analysis can probe layers 1, 2 and 4;
        a 2-layer language model."""
        from transformers import AutoProcessor, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

        ref = CHECKPOINT_FILES / self.demo_reference
        real = json.loads((ref / "config.json").read_text(encoding="utf-8"))
        processor = AutoProcessor.from_pretrained(ref)
        check_answer_tokens(processor.tokenizer, self.name)
        vision = real["vision_config"]
        image_size, patch = vision["image_size"], vision["patch_size"]
        config = LlavaConfig(
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=4, num_attention_heads=2, image_size=image_size, patch_size=patch,
                               projection_dim=32, hidden_act=vision.get("hidden_act", "quick_gelu")),
            text_config=tiny_llama(real["vocab_size"], real["pad_token_id"]),
            image_token_index=real["image_token_index"], vision_feature_layer=real["vision_feature_layer"],
            vision_feature_select_strategy=real["vision_feature_select_strategy"],
            image_seq_length=(image_size // patch) ** 2, pad_token_id=real["pad_token_id"], tie_word_embeddings=False,
        )
        model = LlavaForConditionalGeneration(config)
        model.generation_config = GenerationConfig.from_pretrained(ref)
        model.save_pretrained(out)
        hub_weight_names(out / "model.safetensors")
        processor.save_pretrained(out)


def hub_weight_names(weights: Path) -> None:
    """Rename the CLIP tower's weights to the layout of the hub checkpoint (``vision_tower.vision_model.*``).
    transformers 5.23 saves them as ``vision_tower.*`` and reads either; vLLM reads only the hub's."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    renamed = {(f"vision_tower.vision_model.{k.removeprefix('vision_tower.')}"
                if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") else k): v
               for k, v in tensors.items()}
    save_file(renamed, weights, metadata={"format": "pt"})


FAMILY = Llava()
