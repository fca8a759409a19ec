"""Stage scoring: POPE (official answer rule, strict parser, P(yes) metrics) and CHAIR with image-clustered
intervals and paired tests, the transcription and visibility tables, and the paper's tables and figures. Reads the
inference files and COCO's annotations; writes results/scores/, results/tables/ and results/figures/."""
