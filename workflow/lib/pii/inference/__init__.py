"""Stage inference: every request of a model through one backend (transformers, vLLM or an OpenAI-compatible
server), the model families, and what each model's processor lets through of the strip. Reads the samples, the
manifests and the model; writes results/inference/{task}/{model}/{setting}/r{repeat}.parquet and the unit cache."""
