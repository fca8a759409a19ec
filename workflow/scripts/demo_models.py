"""Build tiny, randomly initialised (seeded) checkpoints of the three real model classes, fully offline.

Each folder holds what ``from_pretrained`` needs: config, weights, generation config, a tokenizer trained here on a
built-in English word list (plus the family's special tokens), the image processor and the family's real chat
template. The pipeline then loads these folders by path through exactly the code that loads the real checkpoints.

Sizes follow each family's real shape where it matters to the analyses (patch 14, CLIP feature layer -2, Qwen's
window attention and 2x2 merge), everything else is shrunk so that a CPU builds all three in seconds.
"""


import contextlib
import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from pipeline_io import PipelineError, log, params_config, run_main

FAMILIES = ("qwen2_5_vl", "llava", "instructblip")

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

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# A small English corpus: the words of the prompts, POPE questions and answers, COCO categories and captions.
_WORDS = """
Yes No yes no not Not Is is there a an the in image picture photo this that of on with and or to at by for from
Describe describe detail details Answer answer question questions You you are helpful assistant USER ASSISTANT user
assistant system I see can it its it's there's shows show showing contains contain some two three many one few
person people man woman child boy girl bicycle car motorcycle airplane bus train truck boat traffic light fire
hydrant stop sign parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella
handbag tie suitcase frisbee skis snowboard sports ball kite baseball bat glove skateboard surfboard tennis racket
bottle wine glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot pizza donut cake chair
couch potted plant bed dining table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster sink
refrigerator book clock vase scissors teddy hair drier toothbrush red green blue yellow white black brown small
large big left right top bottom middle front behind near next standing sitting lying walking holding street road
room kitchen field grass water sky tree trees building wall floor window door color colors shape square circle
rectangle drawn objects object scene background foreground center corner edge text strip below above
"""


def corpus_lines() -> list[str]:
    words = _WORDS.split()
    sentences = [
        "You are a helpful assistant.", "Describe this image in detail.", "Answer the question in the image.",
        "Is there a dog in the image?", "Yes, there is a dog in the image.", "No, there is no dog in the image.",
        "The image shows a red car next to a tree.", "Yes", "No", "yes", "no", "USER: ASSISTANT:",
    ]
    # Repetition makes every word frequent enough to become one token.
    return sentences * 20 + [" ".join(words[i:i + 8]) for i in range(0, len(words), 4)] * 10 + words * 10


def _bpe(pre_tokenizer, decoder, specials: list[str], unk: str | None, vocab_size: int = 1200):
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    alphabet = sorted(set("".join(corpus_lines())) | set("\n.,?!:;'\"()-0123456789"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    return tok


def qwen_tokenizer():
    """Byte-level BPE like Qwen2's, with Qwen's special tokens (the first is the pad / end-of-text token)."""
    from tokenizers import decoders, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), QWEN_SPECIALS, None)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=QWEN_SPECIALS[1:], padding_side="left")
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def llama_tokenizer(extra_specials: list[str]):
    """SentencePiece-style (metaspace) BPE like Llama's: <unk>=0, <s>=1, </s>=2, BOS added; extras appended."""
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    raw = _bpe(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first"),
               decoders.Metaspace(replacement="\u2581", prepend_scheme="first"), ["<unk>", "<s>", "</s>"], "<unk>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": extra_specials})
    return tok


def bert_tokenizer():
    """WordPiece, lower-cased, [CLS] ... [SEP], like bert-base-uncased (InstructBLIP's Q-Former tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The vocabulary is listed, not trained: the WordPiece trainer breaks ties in hash-map order, so its vocabulary
    # (and every demo InstructBLIP output) would change from process to process.
    words = Counter(w for line in corpus_lines() for w in re.findall(r"\w+|[^\w\s]", line.lower()))
    chars = sorted({c for w in words for c in w})
    pieces = specials + chars + [f"##{c}" for c in chars]
    pieces += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:600 - len(pieces)]
    raw = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def check_answer_tokens(tok, family: str) -> None:
    """p_yes reads single-token "Yes"/"No": fail the build loudly if the tokenizer splits them."""
    for word in ("Yes", "No"):
        ids = tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise PipelineError(f"demo tokenizer for {family}: '{word}' is {len(ids)} tokens; it must be one")


def _tiny_llama(vocab_size: int, pad_id: int, bos_id: int = 1, eos_id: int = 2) -> dict:
    return dict(model_type="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=pad_id,
                bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False)


def build_qwen2_5_vl(out: Path) -> None:
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = qwen_tokenizer()
    check_answer_tokens(tok, "qwen2_5_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1, 3], initializer_range=0.02),
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Like the real checkpoint, the saved generation defaults are near-greedy sampling; the pipeline overrides them.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=True, temperature=0.1, top_k=1,
        top_p=0.001, repetition_penalty=1.05)
    model.save_pretrained(out)
    # 224x224 at most: 16x16 patches, 8x8 merged tokens, four 112-px attention windows.
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224})
    # The processor class wants a video processor, which needs torchvision: save its parts (tokenizer with the chat
    # template, image processor) the way Qwen2_5_VLProcessor.save_pretrained lays them out; vlm.load_model
    # assembles the processor from them when torchvision is missing (see DESIGN.md).
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE, encoding="utf-8")
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"}, indent=2) + "\n", encoding="utf-8")


def build_llava(out: Path) -> None:
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = llama_tokenizer(["<image>", "<pad>"])
    tok.pad_token = "<pad>"
    check_answer_tokens(tok, "llava")
    image_size, patch = 112, 14
    config = LlavaConfig(
        # CLIP ViT-L/14 shape family, shrunk: patch 14, CLS token, quick_gelu, pre-LN; 4 layers so the
        # attention analysis can probe layers 1, 2 and 4.
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=32,
                           hidden_act="quick_gelu"),
        text_config=_tiny_llama(len(tok), tok.pad_token_id),
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


def build_instructblip(out: Path) -> None:
    from transformers import (
        GenerationConfig,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tok = llama_tokenizer(["<image>", "<pad>"])
    tok.pad_token = "<pad>"
    check_answer_tokens(tok, "instructblip")
    qtok = bert_tokenizer()
    image_size, n_query = 112, 8
    config = InstructBlipConfig(
        # initializer_range 0.02: the vision default (1e-10) leaves a random tower blind to the image.
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14, initializer_range=0.02),
        qformer_config=dict(vocab_size=len(qtok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, encoder_hidden_size=32, cross_attention_frequency=1,
                            pad_token_id=qtok.pad_token_id),
        text_config=_tiny_llama(len(tok), tok.pad_token_id),
        num_query_tokens=n_query, image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qtok,
                                      num_query_tokens=n_query)
    processor.save_pretrained(out)


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Build a folder next to ``path`` and swap it into place only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


BUILDERS = {"qwen2_5_vl": build_qwen2_5_vl, "llava": build_llava, "instructblip": build_instructblip}


def build(family: str, out: str | Path, seed: int = 0) -> Path:
    """Build the tiny checkpoint of ``family`` into folder ``out`` (replaced atomically)."""
    import torch

    if family not in BUILDERS:
        raise PipelineError(f"data.demo.models: unknown family '{family}'; use one of {list(BUILDERS)}")
    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.manual_seed(seed + FAMILIES.index(family))  # distinct weights per family, same seed
        BUILDERS[family](Path(tmp))
        (Path(tmp) / "demo_model.json").write_text(json.dumps({"family": family, "seed": seed}) + "\n", encoding="utf-8")
    log.info("built tiny %s checkpoint in %s", family, out)
    return out


def main(snakemake) -> None:
    cfg = params_config(snakemake)
    build(snakemake.wildcards.family, snakemake.output[0], seed=int(cfg["seed"]))


if "snakemake" in globals():
    run_main(main, snakemake)
