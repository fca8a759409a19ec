"""Stage scoring / rule score_transcribe: can each model read the strip? Exact match and character error rate
of its transcription against the rendered text (transcription.py), overall and per strip-visibility group."""

import polars as pl
import transcription
from pipeline_io import PipelineError, atomic_output, log, read_table, run_main, write_csv, write_table


def rendered_text(manifests: list[str]) -> pl.DataFrame:
    """sample_id -> the text rendered into the strip, from the question manifests."""
    frames = [read_table(path, "manifest").select("sample_id", "text") for path in manifests]
    return pl.concat(frames).unique("sample_id", keep="first", maintain_order=True)


def main(smk) -> None:
    rows = pl.concat([read_table(p, "inference") for p in smk.input.inference], how="diagonal_relaxed")
    rows = rows.with_columns(pl.col("response").cast(pl.String).fill_null(""))
    joined = rows.join(rendered_text(list(smk.input.manifests)), on="sample_id", how="left")
    missing = joined.filter(pl.col("text").is_null())
    if len(missing):
        raise PipelineError(f"transcribe: sample '{missing['sample_id'][0]}' has no rendered text in "
                            f"{list(smk.input.manifests)}; its strip image must be a question variant (rerun "
                            "rendering)")
    scored = transcription.score_rows(joined)
    confidence = float(smk.params.confidence)
    table = transcription.metrics(scored, int(smk.params.seed), int(smk.params.resamples), confidence)
    write_table(table, smk.output.metrics, "transcribe_metrics",
                metadata={"interval": "percentile bootstrap over images", "confidence": confidence,
                          "normalisation": "NFKC, case folded, punctuation removed, white space collapsed"})
    with atomic_output(smk.output.csv, "w") as f:
        write_csv(table, f, float_format="%.6g")
    with atomic_output(smk.output.md, "w") as f:
        f.write("# Transcription of the strip: exact match and character error rate\n\n"
                + transcription.markdown(table, confidence))
    for r in table.filter(pl.col("visibility") == "all").iter_rows(named=True):
        log.info("%s %s: exact match %.3f, CER %.3f over %d requests", r["model"], r["setting"], r["exact_match"],
                 r["cer"], r["n"])


if "snakemake" in globals():
    run_main(main, snakemake)
