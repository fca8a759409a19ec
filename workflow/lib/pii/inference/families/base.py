"""The interface every model family implements: loading, prompts, batched inputs, its demo checkpoint and the
vision tower the encoder analyses probe. A family module defines one subclass of ``Family`` and an instance named
``FAMILY``; ``families/__init__.py`` registers it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pii import WORKFLOW_DIR
from pii.core.stage import PipelineError

# The real checkpoints' small files (tokenizers, chat templates, processor settings; no weights) that demo
# checkpoints are built from; see PROVENANCE.md there.
CHECKPOINT_FILES = WORKFLOW_DIR / "data" / "checkpoint_files"


def user_turn(text: str | None) -> list[dict]:
    """One user message: the image, then the text part unless there is none (prompt-in-image settings)."""
    content: list[dict] = [{"type": "image"}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


class Family:
    """Defaults fit a checkpoint that ``AutoProcessor`` loads and that carries a chat template."""

    name: ClassVar[str]
    model_class_name: ClassVar[str] = "AutoModelForImageTextToText"
    # Which encoder analyses this family supports: "attention" and "layer_similarity" need a CLIP tower or
    # Qwen's ViT, "modality_gap" reads Qwen2.5-VL's language model inputs.
    analyses: ClassVar[frozenset[str]] = frozenset()
    # "clip" (CLS + square patch grid) or "qwen" (windowed ViT with 2x2 merge): how the analyses read the tower.
    vision_encoder: ClassVar[str | None] = None
    encoder_label: ClassVar[str] = ""
    # Whether models.<m>.image_preprocess: pad is offered (the original LLaVA-1.5 expand-to-square).
    supports_pad: ClassVar[bool] = False
    # Whether vLLM implements this architecture (models.<m>.backend: vllm); the default for a family of
    # transformers' Auto classes, whose checkpoints vLLM mostly serves.
    vllm_supported: ClassVar[bool] = True
    # Folder of CHECKPOINT_FILES whose real tokenizer, chat template and processor settings the demo model uses.
    demo_reference: ClassVar[str | None] = None

    # --- loading --------------------------------------------------------------------------------------------

    def model_class(self):
        import transformers

        return getattr(transformers, self.model_class_name)

    def load_model(self, path: str, **kwargs):
        return self.model_class().from_pretrained(path, **kwargs)

    def load_processor(self, path: str, revision: str | None = None, model_config=None):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path, **_revision(revision))
        processor.tokenizer.padding_side = "left"
        return processor

    # --- requests -------------------------------------------------------------------------------------------

    def build_prompt(self, processor, text: str | None) -> str:
        """The exact prompt string of one request (``text`` None: an image-only user turn)."""
        if not getattr(processor, "chat_template", None):
            raise PipelineError(f"{type(processor).__name__} has no chat template; family '{self.name}' needs one "
                                "(give the checkpoint a chat_template.jinja or use a family with a fixed format)")
        return processor.apply_chat_template(user_turn(text), tokenize=False, add_generation_prompt=True)

    def batch_inputs(self, processor, prompts: list[str], images: list) -> dict[str, Any]:
        """Processor outputs for one left-padded batch (tensors on the CPU)."""
        return processor(text=prompts, images=images, return_tensors="pt", padding=True)

    def pad_to_square(self, processor) -> None:
        """Switch the processor to padding each image to a square before its own resizing (image_preprocess:
        pad)."""
        raise PipelineError(f"image_preprocess: pad is not offered for family '{self.name}'; use checkpoint")

    def image_processor(self, processor):
        return getattr(processor, "image_processor", processor)

    def strip_geometry(self, processor, width: int, height: int, strip_box, font_px):
        """What this model's vision encoder gets of a width x height image's strip and photo
        (``processor_view.StripView``): a probe image of that size goes through the family's image processor as
        inference uses it, and every view or tile it makes is read back (``processor_view.probed_view``). strip_box:
        the manifest's (x0, y0, x1, y1), or None for an image without a strip; font_px: its font size or None."""
        from pii.inference.processor_view import probed_view

        return probed_view(self.image_processor(processor), width, height, strip_box, font_px)

    # --- analyses -------------------------------------------------------------------------------------------

    def vision_tower(self, model):
        """The vision encoder module the analyses run on its own."""
        inner = getattr(model, "model", model)
        for attr in ("vision_tower", "visual", "vision_model"):
            tower = getattr(inner, attr, None) or getattr(model, attr, None)
            if tower is not None:
                return tower
        raise PipelineError(f"{type(model).__name__} has no vision tower the analyses know how to read")

    # --- demo -----------------------------------------------------------------------------------------------

    def reference_files(self) -> list[Path]:
        """The real checkpoint files the demo model is built from (inputs of the demo_models rule)."""
        if not self.demo_reference:
            return []
        return sorted(p for p in (CHECKPOINT_FILES / self.demo_reference).iterdir() if p.is_file())

    def build_demo(self, out: Path) -> None:
        """Save a tiny randomly initialised checkpoint of this family into ``out`` (the torch seed is set)."""
        raise PipelineError(f"family '{self.name}' has no demo checkpoint; remove it from data.demo.models")


def _revision(revision: str | None) -> dict:
    return {"revision": revision} if revision else {}
