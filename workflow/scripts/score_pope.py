"""Rule score_pope: POPE metrics per model/setting of one POPE task (``pii.scoring.pope``; the paper's ``pope`` or a
further split such as ``pope_random``) and every parsed answer."""

from pii.core.stage import log, run_main
from pii.core.tables import read_table, write_table
from pii.scoring.inference_files import metadata, read_inference
from pii.scoring.pope import POPE_INTERVAL, pope_metadata, score_pope


def main(smk) -> None:
    p = smk.params
    task = smk.wildcards.task
    data, groups = read_inference(list(smk.input.inference), task, kind="pope",
                                  sample_ids=read_table(smk.input.sample, "sample")["sample_id"].to_list())
    log.info("scoring %d %s rows in %d files", len(data), task, len(groups))
    metrics, answers = score_pope(data, p.seed, p.resamples, p.confidence, groups, p.baseline)
    meta = metadata(p.seed, p.resamples, p.confidence, p.baseline, POPE_INTERVAL, pope_metadata(metrics))
    write_table(answers, smk.output.answers, "pope_answers", meta)
    write_table(metrics, smk.output.metrics, "pope_metrics", meta)


if "snakemake" in globals():
    run_main(main, snakemake)
