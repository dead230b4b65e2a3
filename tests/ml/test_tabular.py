from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.ml.tabular import (
    MAX_COLUMNS,
    TableFormatError,
    TableLimits,
    TableTooLarge,
    detect_format,
    read_table,
)
from tests.datasets.files import constant_parquet


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def write_parquet(tmp_path: Path, table: pa.Table, name: str = "data.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(table, path)
    return path


# --- format detection -------------------------------------------------------------------------


def test_detect_format_prefers_parquet_magic_over_the_name(tmp_path: Path) -> None:
    path = write_parquet(tmp_path, pa.table({"a": [1]}), name="misnamed.csv")
    assert detect_format(path) == "parquet"
    assert detect_format(path, filename="upload.csv") == "parquet"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("data.csv", "csv"),
        ("data.CSV", "csv"),
        ("data.parquet", "parquet"),
        ("DATA.PQ", "parquet"),
        ("data.txt", "csv"),
        ("no_extension", "csv"),
    ],
)
def test_detect_format_falls_back_to_the_extension(
    tmp_path: Path, filename: str, expected: str
) -> None:
    path = write(tmp_path, "upload.bin", "a,b\n1,2\n")
    assert detect_format(path, filename=filename) == expected


def test_detect_format_uses_the_path_name_without_a_filename(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "x.pq", "not parquet")) == "parquet"
    assert detect_format(write(tmp_path, "x.csv", "a\n1\n")) == "csv"
    assert detect_format(write(tmp_path, "empty.csv", b"")) == "csv"


# --- CSV --------------------------------------------------------------------------------------


def test_read_csv_types_and_no_index_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.csv",
        "id,score,name,flag,when,maybe\n"
        "1,0.5,ann,true,2024-01-01,7\n"
        "2,1.5,bob,false,2024-01-02,\n"
        "3,,,True,2024-01-03,9\n",
    )
    frame = read_table(path, "csv")
    assert list(frame.columns) == ["id", "score", "name", "flag", "when", "maybe"]
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame["id"].dtype == np.int64
    assert frame["score"].dtype == np.float64
    assert np.isnan(frame["score"].iloc[2])
    assert pd.api.types.is_string_dtype(frame["name"].dtype)
    assert frame["name"].iloc[0] == "ann"
    assert frame["name"].isna().iloc[2]
    assert frame["flag"].dtype == np.bool_
    assert frame["when"].iloc[0] == "2024-01-01"  # dates stay text; no guessing
    assert frame["maybe"].dtype == pd.Int64Dtype()  # an integer column with a blank
    assert frame["maybe"].tolist() == [7, pd.NA, 9]


def test_read_csv_strips_a_utf8_bom_and_keeps_unicode(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "\ufeffcity,n\nZürich,1\n東京,2\n".encode())
    frame = read_table(path, "csv")
    assert list(frame.columns) == ["city", "n"]
    assert frame["city"].tolist() == ["Zürich", "東京"]


def test_read_csv_accepts_quoted_commas_and_trailing_empty_values(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'a,b,c\n"x, y",1,\n\n"z",2,3\n')
    frame = read_table(path, "csv")
    assert frame["a"].tolist() == ["x, y", "z"]
    assert frame["c"].isna().tolist() == [True, False]


@pytest.mark.parametrize("quote", ["", '"'])
def test_read_csv_blank_lines_and_empty_last_values_are_not_short_rows(
    tmp_path: Path, quote: str
) -> None:
    path = write(tmp_path, "d.csv", f"a,b,c\n{quote}q{quote},2,\n   \n\n4,5,\r\n")
    frame = read_table(path, "csv")
    assert frame["a"].tolist() == ["q", "4"]
    assert frame["c"].isna().all()


def test_read_csv_types_a_column_from_all_rows(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i}\n" for i in range(300_000))
    frame = read_table(write(tmp_path, "d.csv", f"a,b\n{rows}late,1\n"), "csv")
    assert pd.api.types.is_string_dtype(frame["a"].dtype)
    assert {type(value) for value in frame["a"].iloc[[0, -1]]} == {str}
    assert frame["b"].dtype == np.int64


def test_read_csv_accepts_exactly_the_column_limit(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(MAX_COLUMNS))
    path = write(tmp_path, "wide.csv", header + "\n" + ",".join(["1"] * MAX_COLUMNS) + "\n")
    assert read_table(path, "csv").shape == (1, MAX_COLUMNS)


def ragged_at_line_17() -> str:
    rows = ["a,b,c,d"] + [f"{i},{i},{i},{i}" for i in range(15)] + ["1,2,3,4,5", "1,2,3,4"]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        ("\n\n\n", "no data, only blank lines"),
        ("a,b,c\n", "header but no data rows"),
        ("a,a,b\n1,2,3\n", "duplicate column names: 'a'"),
        ("a,,b\n1,2,3\n", "column 2 has an empty name"),
        ("a, ,b\n1,2,3\n", "column 2 has an empty name"),
        (ragged_at_line_17(), "line 17 has 5 fields, expected 4"),
        ("a,b,c,d\n1,2,3,4,5\n1,2,3,4\n", "line 2 has 5 fields, expected 4"),
        ("a,b,c\n1,2,3\n4,5\n6,7,8\n", "line 3 has 2 fields, expected 3"),
        ("a,b,c\r\n1,2,3\r\n\r\n4,5\r\n", "line 4 has 2 fields, expected 3"),
        ('a,b,c\n"x\ny",2,3\n4,5\n', "line 4 has 2 fields, expected 3"),
        ('a,b\n1,2\n"unclosed,3\n', "could not parse the file as CSV"),
        (bytes(range(256)) * 8, "looks binary (a NUL byte at offset 0)"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe garbage", "not valid UTF-8 text (byte offset 0)"),
        ("name\ncafé\n".encode("latin-1"), "not valid UTF-8 text (byte offset 8)"),
        (b"name\ncaf\xc3", "ends in the middle of a UTF-8 character"),
        (",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)) + "\n1\n", "10,001 columns"),
    ],
)
def test_read_csv_refusals(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = write(tmp_path, "bad.csv", content)
    with pytest.raises(TableFormatError) as caught:
        read_table(path, "csv")
    assert message in str(caught.value)


def test_refusal_messages_say_how_to_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "a,b\n1,2,3\n")
    with pytest.raises(TableFormatError, match=r"quote values that contain commas"):
        read_table(path, "csv")


def test_non_utf8_offset_is_exact_across_read_chunks(tmp_path: Path) -> None:
    body = "a\n" + "é\n" * 600_000  # > 1 MiB of two-byte characters
    content = body.encode() + b"\xff\n"
    with pytest.raises(TableFormatError, match=rf"byte offset {len(body.encode())}\)"):
        read_table(write(tmp_path, "d.csv", content), "csv")


def test_missing_file_is_not_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "absent.csv", "csv")


# --- Parquet ----------------------------------------------------------------------------------


def test_read_parquet_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "maybe": pa.array([1, None, 3], pa.int64()),
            "x": pa.array([0.5, None, 2.0]),
            "name": pa.array(["a", None, "c"]),
            "ok": pa.array([True, False, None]),
            "day": pa.array([date(2024, 1, 1), None, None], pa.date32()),
            "ts": pa.array([0, 1, None], pa.timestamp("us", tz="UTC")),
        }
    )
    frame = read_table(write_parquet(tmp_path, table), "parquet")
    assert frame["id"].dtype == np.int32
    assert frame["maybe"].dtype == pd.Int64Dtype()
    assert frame["x"].dtype == np.float64
    assert pd.api.types.is_string_dtype(frame["name"].dtype)
    assert frame["ok"].dtype == pd.BooleanDtype()
    assert pd.api.types.is_datetime64_any_dtype(frame["day"].dtype)
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"


def test_read_parquet_keeps_a_pandas_index_as_a_plain_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"v": [1, 2]}, index=pd.Index([10, 20], name="key")).to_parquet(path)
    frame = read_table(path, "parquet")
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame["key"].tolist() == [10, 20]


def parquet_bytes(tmp_path: Path) -> bytes:
    table = pa.table({"a": list(range(1000)), "b": [f"s{i}" for i in range(1000)]})
    return write_parquet(tmp_path, table, name="good.parquet").read_bytes()


def test_parquet_refuses_a_truncated_file(tmp_path: Path) -> None:
    good = parquet_bytes(tmp_path)
    path = write(tmp_path, "cut.parquet", good[: len(good) // 2])
    with pytest.raises(TableFormatError, match="truncated or corrupt"):
        read_table(path, "parquet")


def test_parquet_refuses_a_corrupt_footer(tmp_path: Path) -> None:
    good = parquet_bytes(tmp_path)
    footer_length = int.from_bytes(good[-8:-4], "little")
    start = len(good) - 8 - footer_length
    broken = good[:start] + b"\xff" * footer_length + good[-8:]
    path = write(tmp_path, "bad.parquet", broken)
    with pytest.raises(TableFormatError, match="not a readable Parquet file"):
        read_table(path, "parquet")


def test_parquet_refuses_csv_content(tmp_path: Path) -> None:
    path = write(tmp_path, "d.parquet", "a,b\n1,2\n")
    with pytest.raises(TableFormatError, match="not a readable Parquet file"):
        read_table(path, "parquet")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"a": pa.array([], pa.int64())}), "header but no data rows"),
        (
            pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"]),
            "duplicate column names: 'x'",
        ),
        (
            pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", ""]),
            "column 2 has an empty name",
        ),
        (pa.table({"a": pa.array([[1, 2]])}), "column 'a' has Parquet type list<"),
        (pa.table({"a": pa.array([b"\x00"])}), "not supported"),
    ],
)
def test_parquet_refusals(tmp_path: Path, table: pa.Table, message: str) -> None:
    with pytest.raises(TableFormatError) as caught:
        read_table(write_parquet(tmp_path, table), "parquet")
    assert message in str(caught.value)


def test_parquet_refuses_too_many_columns(tmp_path: Path) -> None:
    count = MAX_COLUMNS + 1
    table = pa.Table.from_arrays(
        [pa.array([1], pa.int8())] * count, names=[f"c{i}" for i in range(count)]
    )
    with pytest.raises(TableFormatError, match="10,001 columns"):
        read_table(write_parquet(tmp_path, table), "parquet")


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "a\n1\n")
    with pytest.raises(TableFormatError, match="unknown table format"):
        read_table(path, "xlsx")  # type: ignore[arg-type]


# --- size limits ------------------------------------------------------------------------------

ROOMY = TableLimits(max_rows=10_000_000, max_decoded_bytes=10 * 1024**3)


def constant_rows(tmp_path: Path, rows: int) -> Path:
    return write(tmp_path, "bomb.parquet", constant_parquet(rows))


def repeated_text(tmp_path: Path, rows: int, width: int) -> Path:
    """One `width`-character string repeated `rows` times: a dictionary page and indices."""
    indices = pa.array(np.zeros(rows, dtype=np.int32))
    table = pa.table({"s": pa.DictionaryArray.from_arrays(indices, pa.array(["x" * width]))})
    path = tmp_path / "text.parquet"
    pq.write_table(table, path, compression="zstd", store_schema=False)  # read back as string
    return path


def test_parquet_row_count_is_bounded_from_the_footer(tmp_path: Path) -> None:
    path = constant_rows(tmp_path, 5_000_000)
    assert path.stat().st_size < 64 * 1024
    limits = TableLimits(max_rows=2_000_000, max_decoded_bytes=10 * 1024**3)
    with pytest.raises(TableTooLarge, match="5,000,000 rows, more than the 2,000,000") as caught:
        read_table(path, "parquet", limits)
    assert caught.value.limit == "rows"
    assert len(read_table(path, "parquet", ROOMY)) == 5_000_000


def test_parquet_decoded_size_is_bounded_before_pandas(tmp_path: Path) -> None:
    """Fixed-width columns weigh rows x width whatever their pages hold."""
    path = constant_rows(tmp_path, 1_000_000)
    limits = TableLimits(max_rows=10_000_000, max_decoded_bytes=4_000_000)
    with pytest.raises(TableTooLarge, match="8,000,000 bytes") as caught:
        read_table(path, "parquet", limits)
    assert caught.value.limit == "decoded_bytes"


def test_parquet_dictionary_text_is_measured_decoded(tmp_path: Path) -> None:
    """200,000 copies of a 10,000-character string: under a KiB on disk, 2 GB decoded."""
    path = repeated_text(tmp_path, 200_000, 10_000)
    assert path.stat().st_size < 4096
    limits = TableLimits(max_rows=10_000_000, max_decoded_bytes=100 * 1024**2)
    with pytest.raises(TableTooLarge, match="2,001,600,000 bytes"):
        read_table(path, "parquet", limits)


def test_parquet_within_limits_reads_as_without(tmp_path: Path) -> None:
    table = pa.table(
        {
            "n": pa.array([1, None, 3], pa.int64()),
            "s": pa.array(["a", None, "c"]),
            "l": pa.array(["x", "y", "x"], pa.large_string()),
            "d": pa.array(["p", "q", "p"]).dictionary_encode(),
            "t": pa.array([1, 2, 3], pa.timestamp("us")),
        }
    )
    path = write_parquet(tmp_path, table)
    bounded = read_table(path, "parquet", TableLimits(max_rows=3, max_decoded_bytes=10_000))
    pd.testing.assert_frame_equal(bounded, read_table(path, "parquet"))


def test_csv_rows_and_size_are_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "a\n" + "1\n" * 11)
    with pytest.raises(TableTooLarge, match="more rows than the 10 accepted") as caught:
        read_table(path, "csv", TableLimits(max_rows=10, max_decoded_bytes=10_000))
    assert caught.value.limit == "rows"
    assert len(read_table(path, "csv", TableLimits(max_rows=11, max_decoded_bytes=10_000))) == 11
    with pytest.raises(TableTooLarge, match="24 bytes") as caught:
        read_table(path, "csv", TableLimits(max_rows=100, max_decoded_bytes=23))
    assert caught.value.limit == "decoded_bytes"
