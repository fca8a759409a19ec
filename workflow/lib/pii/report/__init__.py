"""Stage report: one self-contained page and a Markdown summary of the run, built from the metrics tables, the
tables' CSV files, the inference metadata, the contact sheets and the figures. Reads results/; writes
results/report/index.html and results/report/summary.md."""
