"""The real checkpoints' files the demo and the tests are built from (workflow/data/checkpoint_files): their bytes
are the published ones, and the prompts, token ids and image-token counts they give are the real models'."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from pii.inference.families.base import CHECKPOINT_FILES

QWEN = CHECKPOINT_FILES / "Qwen--Qwen2.5-VL-7B-Instruct"
LLAVA = CHECKPOINT_FILES / "llava-hf--llava-1.5-7b-hf"
Q = "Is there a dog in the image?"
# image sizes of the study: a landscape COCO image with its 34-px strip, a portrait one, a square-ish one
SIZES = [(640, 514), (480, 674), (640, 674)]


def test_every_file_is_the_published_one():
    rows = re.findall(r"^\| `([^`]+)` \|.*\| ([\d,]+) \| `([0-9a-f]{64})` \|$",
                      (CHECKPOINT_FILES / "PROVENANCE.md").read_text(encoding="utf-8"), flags=re.M)
    listed = {name for name, _, _ in rows}
    present = {str(p.relative_to(CHECKPOINT_FILES)) for p in CHECKPOINT_FILES.rglob("*") if p.is_file()}
    assert listed == present - {"PROVENANCE.md"}
    for name, size, digest in rows:
        data = (CHECKPOINT_FILES / name).read_bytes()
        assert len(data) == int(size.replace(",", "")) and hashlib.sha256(data).hexdigest() == digest, name


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN)


@pytest.fixture(scope="module")
def llava_processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(LLAVA)


def _qwen_prompt(tokenizer, text):
    from pii.inference import families

    template = json.loads((QWEN / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    tokenizer.chat_template = template
    return families.get("qwen2_5_vl").build_prompt(tokenizer, text)


@pytest.mark.parametrize("text", [Q, None, "Answer the question in the image."])
def test_qwen_prompt_and_ids(qwen_tokenizer, text):
    prompt = _qwen_prompt(qwen_tokenizer, text)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      f"<|vision_start|><|image_pad|><|vision_end|>{text or ''}<|im_end|>\n<|im_start|>assistant\n")
    ids = qwen_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # Qwen2's published ids: <|im_start|> 151644, <|im_end|> 151645, <|vision_start|> 151652, <|vision_end|>
    # 151653, <|image_pad|> 151655, "system" 8948, "user" 872, "assistant" 77091, "\n" 198; no BOS
    assert ids[:3] == [151644, 8948, 198] and ids[-3:] == [151644, 77091, 198]
    start = ids.index(151652)
    assert ids[start - 3:start + 3] == [151644, 872, 198, 151652, 151655, 151653]
    if text is None:
        assert ids[start + 3:start + 5] == [151645, 198]


@pytest.mark.parametrize("text, want", [(Q, f"USER: <image>\n{Q} ASSISTANT:"), (None, "USER: <image>\nASSISTANT:")])
def test_llava_prompt_and_ids(llava_processor, text, want):
    from pii.inference import families

    prompt = families.get("llava").build_prompt(llava_processor, text)
    assert prompt == want
    ids = llava_processor.tokenizer(prompt)["input_ids"]
    assert ids[0] == 1 and ids.count(32000) == 1  # BOS <s>; <image> is id 32000 (config.json image_token_index)


@pytest.mark.parametrize("size", SIZES)
def test_image_token_counts(qwen_tokenizer, llava_processor, size):
    """Qwen2.5-VL: one token per 28 x 28 pixels after smart_resize (no crop): 644x504 -> 23 x 18 = 414,
    476x672 -> 17 x 24 = 408, 644x672 -> 23 x 24 = 552. llava-1.5: always 24 x 24 = 576 (336-px crop)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    image = Image.new("RGB", size, "white")
    want = {(640, 514): 414, (480, 674): 408, (640, 674): 552}[size]
    image_processor = AutoImageProcessor.from_pretrained(QWEN)
    grid = image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid.prod()) // 4 == want  # the processor writes grid.prod() / merge_size**2 <|image_pad|> tokens
    prompt = llava_processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}],
                                                 add_generation_prompt=True)
    enc = llava_processor(text=[prompt], images=[image], return_tensors="pt")
    assert int((enc["input_ids"] == 32000).sum()) == 576


@pytest.mark.parametrize("family, folder, sizes", [
    ("qwen2_5_vl", QWEN, [(640, 514), (480, 674), (640, 674), (2000, 100)]),
    ("llava", LLAVA, [(640, 514), (480, 674)]),
])
def test_the_batch_sort_counts_the_image_tokens_the_processor_writes(family, folder, sizes):
    """The batches are sorted by text plus image tokens (vlm.image_tokens): equal to the <image> / <|image_pad|>
    tokens the real processor expands each image into, so similar lengths share a batch and pad least."""
    from PIL import Image

    from pii.inference import families, vlm

    processor = families.get(family).load_processor(str(folder))
    lm = vlm.LoadedModel(name=family, family=family, model=None, processor=processor, device=None, dtype=None,
                         path=str(folder), revision=None)
    prompt = families.get(family).build_prompt(processor, None)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>" if family == "qwen2_5_vl" else "<image>")
    for width, height in sizes:
        enc = processor(text=[prompt], images=[Image.new("RGB", (width, height), "white")], return_tensors="pt")
        assert vlm.image_tokens(lm, width, height) == int((enc["input_ids"] == image_id).sum()), (width, height)


@pytest.mark.parametrize("folder,per_token", [
    # 28 layers x 4 kv heads (grouped-query attention) x 128 x key and value x 2 bytes: 56 KiB a token
    ("Qwen--Qwen2.5-VL-7B-Instruct", 2 * 28 * 4 * 128 * 2),
    # Vicuna-7B (LLaMA-7B): 32 layers x 32 heads x 128, the 0.5 MiB a token of every LLaMA-7B
    ("llava-hf--llava-1.5-7b-hf", 2 * 32 * 32 * 128 * 2),
])
def test_kv_cache_per_token_from_the_real_configs(folder, per_token):
    """The GPU memory check reads the published config.json as transformers does (LLaVA's text config states only
    what differs from LLaMA's defaults), and a batch of the paper's longest requests fits an 80 GB GPU."""
    from transformers import AutoConfig

    from pii.inference import backends, vlm

    config = AutoConfig.from_pretrained(CHECKPOINT_FILES / folder)
    assert vlm.kv_bytes_per_token(config, 2) == per_token
    # config.yaml's batch of 32 captions (LLaVA: 576 image tokens + prompt + 512 answer tokens) in 65 GB left
    # free after the 14 GB of bf16 weights
    need, fits = backends.kv_cache_need(per_token, 576 + 40 + 512, 32, 65 * 10**9)
    assert need == 32 * 1128 * per_token and fits >= 32
