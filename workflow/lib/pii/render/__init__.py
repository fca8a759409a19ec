"""Stage render: the variants each sample is shown as (original, control with a blank strip, question with the
question in the strip) and a contact sheet per task. Reads results/data/{task}_sample.parquet; writes
results/images/{task}/ (PNGs and one manifest per variant)."""
