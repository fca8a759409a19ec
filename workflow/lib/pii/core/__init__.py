"""Core: what every stage shares. Tables (Parquet checked against workflow/schemas/tables/, atomic writes), how a
rule script runs and logs (stage.py), the config checks the Snakefile runs first, the image loader every stage uses,
the GPU claimed by a GPU job, and how a number is printed in every table."""
