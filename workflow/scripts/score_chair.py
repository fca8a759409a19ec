"""Rule score_chair: CHAIR detail per caption and CHAIR metrics per task/model/setting (``pii.scoring.chair``)."""

from pii.core.stage import log, run_main
from pii.core.tables import read_table, write_table
from pii.scoring.chair import CHAIR_INTERVAL, CHAIR_METADATA, chair_metrics, load_ground_truth, score_captions
from pii.scoring.inference_files import metadata, read_inference


def main(smk) -> None:
    p = smk.params
    data, groups = read_inference(list(smk.input.inference), "caption",
                                  sample_ids=read_table(smk.input.sample, "sample")["sample_id"].to_list())
    vocab, gt = load_ground_truth(data, smk.input.synonyms, smk.input.instances, smk.input.captions)
    log.info("CHAIR ground truth for %d images; scoring %d captions", len(gt), len(data))
    captions = score_captions(data, vocab, gt, drop_incomplete=p.drop_incomplete_sentence)
    metrics = chair_metrics(captions, p.seed, p.resamples, p.confidence, groups, p.baseline)
    meta = metadata(p.seed, p.resamples, p.confidence, p.baseline, CHAIR_INTERVAL,
                    {**CHAIR_METADATA, "drop_incomplete_sentence": bool(p.drop_incomplete_sentence)})
    write_table(captions, smk.output.captions, "chair_captions", meta)
    write_table(metrics, smk.output.metrics, "chair_metrics", meta)


if "snakemake" in globals():
    run_main(main, snakemake)
