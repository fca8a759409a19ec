"""Every table a stage writes or reads: Parquet checked against its JSON Schema (workflow/schemas/tables/), our
JSON metadata in each file, CSV copies, atomic writes (a temporary name renamed into place, so a killed job leaves
no half-written file), file hashes, the canonical JSON of a config subtree and saved figures."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pii import WORKFLOW_DIR
from pii.core.stage import PipelineError

SCHEMA_DIR = WORKFLOW_DIR / "schemas" / "tables"
# The key of our JSON metadata in every Parquet file (model, revision, config hash, fingerprint, ...).
METADATA_KEY = b"prompt_in_image"


def canonical_json(value: Any) -> str:
    """The one canonical text of a config subtree: sorted keys, no whitespace variation."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file next to ``path`` and rename it into place only if the block succeeds,
    so an interrupted or failing stage never leaves a half-written output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_next_to(path)
    try:
        if mode is None:  # caller writes the file itself, by name
            yield tmp
        else:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:  # text: UTF-8, whatever the locale
                yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_file_next_to(path: Path) -> str:
    """A new empty file with a unique name beside ``path``, created with mode 0666 less the process umask like
    any output (mkstemp would make it 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return str(tmp)
        except FileExistsError:  # another writer's name: draw again
            continue


def atomic_path(path: str | os.PathLike):
    """Like ``atomic_output`` but yields the temporary file's name, for writers that want a path."""
    return atomic_output(path, mode=None)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    fig.clear()
    import matplotlib.pyplot as plt  # only the plotting stages pay for the import

    plt.close(fig)


# --- Parquet tables with schemas -------------------------------------------------------------------------

_JSON_TO_ARROW = {
    "string": (pa.types.is_string, pa.types.is_large_string),
    "integer": (pa.types.is_integer,),
    "number": (pa.types.is_floating, pa.types.is_integer),
    "boolean": (pa.types.is_boolean,),
    "array": (pa.types.is_list, pa.types.is_large_list),
}


def load_table_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.yaml"
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def check_table(table: pa.Table, schema_name: str, source: str = "table") -> None:
    """Check a table against ``workflow/schemas/tables/<schema_name>.schema.yaml``: required columns present,
    column types as declared, no nulls where the schema does not allow them."""
    schema = load_table_schema(schema_name)
    missing = [c for c in schema.get("required", []) if c not in table.column_names]
    if missing:
        raise PipelineError(f"{source}: missing column(s) {missing} required by schema '{schema_name}'")
    for col, spec in schema.get("properties", {}).items():
        if col not in table.column_names:
            continue
        types = spec.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        nullable = "null" in types
        kinds = [t for t in types if t != "null"]
        arrow_type = table.schema.field(col).type
        if kinds and not pa.types.is_null(arrow_type):
            if not any(check(arrow_type) for k in kinds for check in _JSON_TO_ARROW.get(k, ())):
                raise PipelineError(
                    f"{source}: column '{col}' has type {arrow_type}, schema '{schema_name}' wants {kinds}"
                )
        if not nullable and table.column(col).null_count:
            first = table.column(col).to_pylist().index(None)
            raise PipelineError(f"{source}: column '{col}' is empty in row {first}; schema '{schema_name}' requires it")
        allowed = spec.get("enum")
        if allowed is not None:
            bad = set(table.column(col).to_pylist()) - set(allowed) - {None}
            if bad:
                raise PipelineError(f"{source}: column '{col}' has values {sorted(map(str, bad))}, allowed {allowed}")
        pattern = spec.get("pattern")
        if pattern is not None:
            bad = {v for v in table.column(col).to_pylist() if v is not None and not re.fullmatch(pattern, str(v))}
            if bad:
                raise PipelineError(f"{source}: column '{col}' has values {sorted(map(str, bad))[:5]} that do not "
                                    f"match {pattern}")


def _stored_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column is stored with: lists as ``list`` (not ``large_list``) of ``string`` items, a
    ``string_view`` as ``large_string``; the types the pipeline's Parquet files have always had."""
    if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        item = t.value_type
        item = pa.string() if pa.types.is_large_string(item) or pa.types.is_string_view(item) else _stored_type(item)
        return pa.list_(item)
    if pa.types.is_string_view(t):
        return pa.large_string()
    return t


def to_arrow(df, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """A polars DataFrame (or an Arrow table, or any frame ``pyarrow.table`` takes) as the Arrow table
    ``write_table`` stores: float NaN as null (a missing number is null in every file), list and string types as
    ``_stored_type`` gives them, and any column named in ``types`` cast to that type unless it holds only nulls (an
    all-null column keeps Arrow's null type)."""
    if isinstance(df, pa.Table):
        table = df
    elif isinstance(df, pl.DataFrame):
        table = df.to_arrow()
    else:  # another frame library's table, through the Arrow interface
        table = pa.table(df)
    types = types or {}
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_floating(column.type) and column.length():
            nan = pc.fill_null(pc.is_nan(column), False)
            if pc.any(nan).as_py():
                column = pc.if_else(nan, pa.scalar(None, column.type), column)
        want = types.get(name) if not pa.types.is_null(column.type) else None
        want = want or _stored_type(column.type)
        columns.append(column if column.type == want else column.cast(want))
    return pa.table(columns, names=table.column_names, metadata=table.schema.metadata)


def write_table(df, path: str | os.PathLike, schema_name: str | None = None, metadata: dict | None = None,
                types: dict[str, pa.DataType] | None = None) -> None:
    """Write a polars DataFrame (or an Arrow table) to Parquet atomically, after checking its schema (``to_arrow``
    says how columns are stored; ``types`` casts named columns). ``metadata`` (any JSON-able dict) is stored in
    the file under ``METADATA_KEY``."""
    table = to_arrow(df, types)
    if schema_name:
        check_table(table, schema_name, source=str(path))
    if metadata is not None:
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_arrow(path: str | os.PathLike, schema_name: str | None = None, missing_hint: str = "") -> pa.Table:
    """Read a Parquet file as an Arrow table, checking it against a table schema when given; a missing or
    unreadable file is one clear error (``missing_hint`` is added to a missing file's)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found{missing_hint}")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise PipelineError(f"{path}: not a readable Parquet file ({err}); delete it and rerun the rule") from err
    if schema_name:
        check_table(table, schema_name, source=str(path))
    return table


def read_table(path: str | os.PathLike, schema_name: str | None = None) -> pl.DataFrame:
    """Read a Parquet file as a polars DataFrame, checking it against a table schema when given. Missing
    numbers come back as null (files store no NaN)."""
    return pl.from_arrow(read_arrow(path, schema_name))


def records_frame(rows: list[dict], columns: list[str] | None = None, schema_overrides: dict | None = None
                  ) -> pl.DataFrame:
    """A polars DataFrame from row dicts, each column's type inferred from every row (polars alone looks at the
    first 100, so a column that starts with nulls would lose its type): columns in ``columns`` order (missing
    keys are null), else in order of first appearance; ``schema_overrides`` fixes types (e.g. Int64 for an
    integer column that may be all null)."""
    return pl.DataFrame(rows, schema=columns, schema_overrides=schema_overrides, infer_schema_length=None)


def write_csv(frame: pl.DataFrame, f, float_format: str = "%.6g") -> None:
    """Write a frame as CSV to an open text file: a header line, then one line per row (Unix line ends), fields
    quoted only where needed. Floats go through ``float_format``; a missing value (null or NaN) is an empty
    field; an integer column with missing values is written as floats (its numbers through ``float_format``);
    booleans as True / False."""
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(frame.columns)
    columns = []
    for series in frame.get_columns():
        values = series.to_list()
        as_float = series.dtype.is_float() or (series.dtype.is_integer() and series.null_count() > 0)
        if as_float:
            columns.append(["" if v is None or v != v else float_format % float(v) for v in values])
        else:
            columns.append(["" if v is None else str(v) for v in values])
    writer.writerows(zip(*columns, strict=True))


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict written by ``write_table`` (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}
