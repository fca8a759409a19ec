"""The batch-invariance check (rule invariance_check). Users of batched VLM inference report answers that change with the
batch size (padding, kernels chosen by shape, continuous batching). For one model, ``inference.invariance_check``
POPE requests of the baseline setting run greedy twice through the model's own backend: in batches as the infer job
forms them, then one at a time. Output: results/inference/invariance/{model}.parquet, one row per request."""


import polars as pl

from pii.core.stage import PipelineError, log
from pii.core.tables import read_table, write_table
from pii.inference.backends import SharedModel
from pii.inference.job import Job, build_requests, check_images
from pii.inference.runner import plan_batches

GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def check(job: Job, sample_path, manifest_path, n: int, out) -> pl.DataFrame:
    sample = read_table(sample_path, "sample")
    sample = sample.filter(pl.col("task") == job.task) if "task" in sample.columns else sample
    if sample.height < n:
        raise PipelineError(f"inference.invariance_check: {n} requests asked, the {job.task} sample has "
                            f"{sample.height}; lower it")
    requests = build_requests(sample.head(n), read_table(manifest_path, "manifest"), job, str(manifest_path))
    check_images(requests, str(manifest_path))
    models = SharedModel()
    try:
        backend = models.backend(job)
        batched: dict[str, dict] = {}
        for start, chunk in plan_batches(requests, backend.sort_key, job.batch_size):
            for req, res in zip(chunk, backend.run(chunk, job.seed + start), strict=True):
                batched[req.sample_id] = res
        single = {r.sample_id: backend.run([r], job.seed)[0] for r in requests}
    finally:
        models.close()
    rows = []
    for r in requests:
        a, b = batched[r.sample_id], single[r.sample_id]
        diff = None if a.get("p_yes") is None or b.get("p_yes") is None else abs(a["p_yes"] - b["p_yes"])
        rows.append({"sample_id": r.sample_id, "model": job.model, "backend": backend.name,
                     "batch_size": job.batch_size, "response_batched": a["response"],
                     "response_single": b["response"], "identical": a["response"] == b["response"],
                     "p_yes_batched": a.get("p_yes"), "p_yes_single": b.get("p_yes"), "abs_diff_p_yes": diff})
    df = pl.DataFrame(rows, schema_overrides={"p_yes_batched": pl.Float64, "p_yes_single": pl.Float64,
                                              "abs_diff_p_yes": pl.Float64})
    write_table(df, out, "invariance", metadata={"model": job.model, "backend": backend.name, "task": job.task,
                                                 "setting": job.setting, "n": n, "decoding": GREEDY,
                                                 **backend.metadata()})
    log.info("%s (%s): %d of %d greedy answers identical at batch %d and 1; largest |dP(yes)| %s", job.model,
             backend.name, int(df["identical"].sum()), n, job.batch_size,
             "n/a" if df["abs_diff_p_yes"].is_null().all() else f"{df['abs_diff_p_yes'].max():.2e}")
    return df
