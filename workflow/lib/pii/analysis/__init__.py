"""Stage analysis: the encoder analyses that explain the result: CLIP attention on the strip, layer-wise similarity
of question and control images, and Qwen2.5-VL's modality gap, each from the model's own forward pass. Reads the
manifests, the caption inference files and the models; writes results/analysis/."""
