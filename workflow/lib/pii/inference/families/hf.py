"""Any image-text-to-text checkpoint on the Hugging Face hub that ships a chat template: loaded with
``AutoModelForImageTextToText`` and ``AutoProcessor``, prompted through the processor's own chat template (image
first in the user turn, then the text part if any). SmolVLM, Idefics3, Gemma 3, LLaVA-OneVision, InternVL (hf
format) and the like are one config entry each. The encoder analyses do not read these towers.

The demo's member is a tiny Idefics3 (SigLIP-style tower, pixel shuffle, image splitting into tiles plus a global
view), whose processor needs no torchvision."""

from __future__ import annotations

from pathlib import Path

from pii.inference.families.base import Family
from pii.inference.families.demo_parts import check_answer_tokens, llama_tokenizer, tiny_llama

# Idefics3's conversation format ("<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:"), written for the
# demo: a colon right after the role when the turn opens with an image, ": " otherwise.
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
IDEFICS3_SPECIALS = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>",
                     "<pad>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


class HuggingFaceImageTextToText(Family):
    name = "hf"
    model_class_name = "AutoModelForImageTextToText"

    def batch_inputs(self, processor, prompts: list[str], images: list) -> dict:
        # One list of images per request: processors that split or tile images count them per prompt.
        return processor(text=prompts, images=[[image] for image in images], return_tensors="pt", padding=True)

    def build_demo(self, out: Path) -> None:
        from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

        tok = llama_tokenizer(IDEFICS3_SPECIALS)
        tok.pad_token = "<pad>"
        check_answer_tokens(tok, self.name)
        tile, patch, shuffle = DEMO_TILE, 14, 2
        tokens_per_tile = (tile // patch) ** 2 // shuffle**2
        config = Idefics3Config(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=tile, patch_size=patch),
            text_config=tiny_llama(len(tok), tok.pad_token_id),
            scale_factor=shuffle, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        model = Idefics3ForConditionalGeneration(config)
        end_of_utterance = tok.convert_tokens_to_ids("<end_of_utterance>")
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[end_of_utterance, 2],
                                                   pad_token_id=tok.pad_token_id)
        model.save_pretrained(out)
        processor = Idefics3Processor(image_processor=demo_image_processor(tile), tokenizer=tok,
                                      image_seq_len=tokens_per_tile,
                                      chat_template=IDEFICS3_CHAT_TEMPLATE)
        processor.save_pretrained(out)


DEMO_TILE = 56  # px: the demo Idefics3's tile (its SigLIP-style tower's input size)


def demo_image_processor(tile: int = DEMO_TILE):
    """The demo Idefics3's image processor: up to 2 x tile px on the long side, split into tile-px tiles (at most
    2 x 2) plus the whole image squeezed into one more tile as a global view."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    return Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
                                     do_image_splitting=True)


FAMILY = HuggingFaceImageTextToText()
