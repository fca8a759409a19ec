"""Pieces the demo checkpoints share: tokenizers trained here on a built-in English word list (plus each family's
special tokens), so the tiny models load and tokenise like the real ones with no download."""

import re
from collections import Counter

from pii.core.stage import PipelineError

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


def llama_tokenizer(extra_specials: list[str], bos: str = "<s>"):
    """SentencePiece-style (metaspace) BPE like Llama's: <unk>=0, <s>=1, </s>=2, ``bos`` added in front of every
    text (instructblip-vicuna-7b's tokenizer uses </s> there); extras appended."""
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    raw = _bpe(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first"),
               decoders.Metaspace(replacement="\u2581", prepend_scheme="first"), ["<unk>", "<s>", "</s>"], "<unk>")
    bos_id = {"<s>": 1, "</s>": 2}[bos]
    raw.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, bos_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token="</s>", unk_token="<unk>",
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


def tiny_llama(vocab_size: int, pad_id: int, bos_id: int = 1, eos_id: int = 2) -> dict:
    # heads of width 32: the smallest that vLLM's CPU attention kernel takes (it has no kernel for 16)
    return dict(model_type="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, pad_token_id=pad_id,
                bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False)
