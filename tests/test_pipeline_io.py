"""pipeline_io's tables: polars frames in and out, the Arrow types files are stored with, schema checks, CSV text."""

from __future__ import annotations

import io
import math

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pii.core.stage import PipelineError
from pii.core.tables import read_metadata, read_table, records_frame, write_csv, write_table


def test_stored_types_and_round_trip(tmp_path):
    frame = pl.DataFrame({
        "name": ["a", "b", None],
        "count": pl.Series([1, None, 3], dtype=pl.Int64),
        "nothing": [None, None, None],
        "value": [0.5, float("nan"), None],
        "words": [["x", "y"], [], None],
        "values": [[1.0, 2.0], [], [3.0]],
        "flag": [True, False, True],
    })
    path = tmp_path / "t.parquet"
    write_table(frame, path, metadata={"seed": 1})
    schema = pq.read_schema(path)
    assert {f.name: str(f.type) for f in schema} == {
        "name": "large_string", "count": "int64", "nothing": "null", "value": "double",
        "words": "list<element: string>", "values": "list<element: double>", "flag": "bool"}
    assert all(f.nullable for f in schema) and set(schema.metadata) == {b"prompt_in_image"}
    assert pq.read_table(path)["value"].null_count == 2          # NaN is stored as null, as it always was
    back = read_table(path)
    assert isinstance(back, pl.DataFrame) and back.columns == frame.columns
    assert back["value"].to_list() == [0.5, None, None] and back["words"].to_list() == [["x", "y"], [], None]
    assert back["count"].to_list() == [1, None, 3] and back["nothing"].dtype == pl.Null
    assert read_metadata(path) == {"seed": 1}


def test_types_cast_named_columns_but_keep_an_all_null_column_null(tmp_path):
    frame = pl.DataFrame({"label": ["yes", None], "text_prompt": [None, None]})
    write_table(frame, tmp_path / "t.parquet", types={"label": pa.string(), "text_prompt": pa.string()})
    schema = pq.read_schema(tmp_path / "t.parquet")
    assert str(schema.field("label").type) == "string" and str(schema.field("text_prompt").type) == "null"


def test_schema_checked_on_write_and_read(tmp_path):
    frame = pl.DataFrame({"sample_id": ["pope-1"], "task": ["pope"]})
    with pytest.raises(PipelineError, match="missing column"):
        write_table(frame, tmp_path / "bad.parquet", "sample")
    assert not (tmp_path / "bad.parquet").exists()
    pq.write_table(frame.to_arrow(), tmp_path / "foreign.parquet")
    with pytest.raises(PipelineError, match="foreign.parquet: missing column"):
        read_table(tmp_path / "foreign.parquet", "sample")


def test_task_names_are_checked_by_pattern(tmp_path):
    """A sample's task column admits any config task name (pope_random), and nothing that is not one."""
    from inference_fixtures import make_inputs

    sample, _ = make_inputs(tmp_path / "in", "pope", n=2)
    frame = read_table(sample, "sample")
    write_table(frame.with_columns(pl.lit("pope_random").alias("task")), tmp_path / "ok.parquet", "sample")
    with pytest.raises(PipelineError, match=r"column 'task' has values \['Pope Random!'\] that do not match"):
        write_table(frame.with_columns(pl.lit("Pope Random!").alias("task")), tmp_path / "bad.parquet", "sample")


def test_records_frame_infers_every_row():
    rows = [{"a": None}] * 150 + [{"a": 2.5, "b": "x"}]
    frame = records_frame(rows)
    assert frame.schema == pl.Schema({"a": pl.Float64, "b": pl.String}) and frame["a"][-1] == 2.5
    assert records_frame([], ["a", "b"], {"a": pl.Int64}).schema == pl.Schema({"a": pl.Int64, "b": pl.Null})


def test_csv_text_is_the_tables_format():
    """%.6g floats, empty fields for null and NaN, an integer column with gaps as floats, quoting only where
    needed, '\\n' line ends (the text the tables have always had)."""
    frame = pl.DataFrame({
        "setting": ["baseline", "hybrid\nx"], "m:acc": [50.0, 66.666666667], "m:acc_delta": [math.nan, -0.0],
        "m:n": [12, None], "note": ['say "hi", twice', ""], "flag": [True, False], "tiny": [1.23456789e-7, 0.1],
        "big": [1234567.0, 100.0]})
    out = io.StringIO()
    write_csv(frame, out)
    assert out.getvalue() == ('setting,m:acc,m:acc_delta,m:n,note,flag,tiny,big\n'
                              'baseline,50,,12,"say ""hi"", twice",True,1.23457e-07,1.23457e+06\n'
                              '"hybrid\nx",66.6667,-0,,,False,0.1,100\n')


def test_atomic_outputs_follow_the_umask_and_leave_nothing_on_failure(tmp_path):
    """An output gets mode 0666 less the umask (as `touch` would), not a temporary file's 0600; a failing writer
    leaves neither the output nor its temporary file."""
    import os

    from pii.core.tables import atomic_output

    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "a.txt", "w") as f:
            f.write("x")
        os.umask(0o077)
        with atomic_output(tmp_path / "b.txt", "w") as f:
            f.write("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "c.txt", "w") as f:
        f.write("half")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
