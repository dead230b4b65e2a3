"""Files for size and cleanup tests: a compressed Parquet bomb, and what the store holds."""

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def constant_parquet(rows: int) -> bytes:
    """A few KiB that decode to `rows` rows: one constant column, dictionary and run-length
    encoded."""
    buffer = io.BytesIO()
    table = pa.table({"x": pa.array(np.zeros(rows, dtype=np.int64))})
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def stored_files(root: Path) -> list[str]:
    """Every file under the artifact root (objects and staging), relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
