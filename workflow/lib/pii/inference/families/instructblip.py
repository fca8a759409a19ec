"""InstructBLIP (``Salesforce/instructblip-vicuna-7b``): the plain text is the prompt (it also feeds the Q-Former;
there is no chat template) and an image-only request gets the empty string.

The processor is assembled here from the checkpoint's parts (language tokenizer, ``qformer_tokenizer/``, image
processor) with the query-token count and image token taken from the model config, and requests are encoded here
too. ``AutoProcessor`` fails on hub snapshots seen in the wild: a ``processor_config.json`` without
``num_query_tokens``, a tokenizer config giving the image token as a plain string, or one naming
``InstructBlipVideoProcessor``. The real checkpoint's BOS is ``</s>`` (id 2) and it has 32 query tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pii.core.stage import PipelineError
from pii.inference.families.base import Family, _revision
from pii.inference.families.demo_parts import bert_tokenizer, check_answer_tokens, llama_tokenizer, tiny_llama


@dataclass
class InstructBlipParts:
    """What InstructBLIP needs to encode a request; stands in for ``InstructBlipProcessor``."""

    tokenizer: Any
    qformer_tokenizer: Any
    image_processor: Any
    num_query_tokens: int
    image_token_id: int


class InstructBlip(Family):
    name = "instructblip"
    model_class_name = "InstructBlipForConditionalGeneration"
    # vLLM 0.32 has no InstructBLIP, and its Transformers fallback fails on this processor
    # ("'InstructBlipProcessor' object has no attribute '_get_num_multimodal_tokens'")
    vllm_supported = False

    def load_processor(self, path: str, revision: str | None = None, model_config=None) -> InstructBlipParts:
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        kwargs = _revision(revision)
        config = model_config if model_config is not None else AutoConfig.from_pretrained(path, **kwargs)
        if getattr(config, "image_token_index", None) is None or not getattr(config, "num_query_tokens", None):
            raise PipelineError(f"{path}: config.json has no image_token_index / num_query_tokens; use a revision "
                                "of the checkpoint that has them (the hub's current main does)")
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token
        return InstructBlipParts(
            tokenizer=tokenizer,
            qformer_tokenizer=AutoTokenizer.from_pretrained(path, subfolder="qformer_tokenizer", **kwargs),
            image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
            num_query_tokens=int(config.num_query_tokens), image_token_id=int(config.image_token_index))

    def build_prompt(self, processor, text: str | None) -> str:
        return text or ""

    def batch_inputs(self, processor: InstructBlipParts, prompts: list[str], images: list) -> dict:
        """Per request: ``num_query_tokens`` image placeholders, then the tokenised text with its BOS, as the stock
        processor lays it out. The whole sequence is padded on the left (the stock processor would pad the text
        alone, leaving padding between image and text and moving a request's positions with its batch); the
        Q-Former text is padded on the right (a BERT encoder with an attention mask)."""
        import torch

        text_ids = processor.tokenizer(prompts)["input_ids"]
        ids = [[processor.image_token_id] * processor.num_query_tokens + list(t) for t in text_ids]
        qids = processor.qformer_tokenizer(prompts)["input_ids"]
        pad = processor.tokenizer.pad_token_id
        qpad = processor.qformer_tokenizer.pad_token_id
        n = max(len(i) for i in ids)
        qn = max(len(i) for i in qids)
        return {
            "input_ids": torch.tensor([[pad] * (n - len(i)) + i for i in ids]),
            "attention_mask": torch.tensor([[0] * (n - len(i)) + [1] * len(i) for i in ids]),
            "qformer_input_ids": torch.tensor([list(i) + [qpad] * (qn - len(i)) for i in qids]),
            "qformer_attention_mask": torch.tensor([[1] * len(i) + [0] * (qn - len(i)) for i in qids]),
            "pixel_values": processor.image_processor(images, return_tensors="pt")["pixel_values"],
        }

    def build_demo(self, out: Path) -> None:
        from transformers import (
            GenerationConfig,
            InstructBlipConfig,
            InstructBlipForConditionalGeneration,
            InstructBlipProcessor,
        )
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

        # The real checkpoint's facts: BOS </s> (id 2), 32 query tokens, images resized to 224 x 224.
        tok = llama_tokenizer(["<image>", "<pad>"], bos="</s>")
        tok.pad_token = "<pad>"
        check_answer_tokens(tok, self.name)
        qtok = bert_tokenizer()
        image_size, n_query = 224, 32
        config = InstructBlipConfig(
            # initializer_range 0.02: the vision default (1e-10) leaves a random tower blind to the image.
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=14, initializer_range=0.02),
            qformer_config=dict(vocab_size=len(qtok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, encoder_hidden_size=32, cross_attention_frequency=1,
                                pad_token_id=qtok.pad_token_id),
            text_config=tiny_llama(len(tok), tok.pad_token_id, bos_id=2),
            num_query_tokens=n_query, image_token_index=tok.convert_tokens_to_ids("<image>"),
        )
        model = InstructBlipForConditionalGeneration(config)
        model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=2, pad_token_id=tok.pad_token_id)
        model.save_pretrained(out)
        image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
        processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qtok,
                                          num_query_tokens=n_query)
        processor.save_pretrained(out)


FAMILY = InstructBlip()
