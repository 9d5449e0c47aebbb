"""The table formats per-image rows travel in: ``imgpipe predict --output`` writes them and
``imgpipe drift --current`` reads them back (the service's feature log is JSON lines too)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe.errors import ImgpipeError

if TYPE_CHECKING:
    import pandas as pd


def _write_csv(rows: list[dict[str, Any]], names: list[str], target: Path) -> None:
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _write_parquet(rows: list[dict[str, Any]], names: list[str], target: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImgpipeError("--output .parquet needs pyarrow (pip install pyarrow)") from None
    pq.write_table(pa.Table.from_pylist(rows).select(names), target)


def _write_jsonl(rows: list[dict[str, Any]], names: list[str], target: Path) -> None:
    with target.open("w", newline="", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(path)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(path)


def _read_jsonl(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_json(path, lines=True)


Writer = Callable[[list[dict[str, Any]], list[str], Path], None]
Reader = Callable[[Path], "pd.DataFrame"]
# suffix -> (writer of rows with these column names, reader into a DataFrame); pandas and
# pyarrow load only when a table is read or a Parquet file written.
TABLE_FORMATS: dict[str, tuple[Writer, Reader]] = {
    ".parquet": (_write_parquet, _read_parquet),
    ".csv": (_write_csv, _read_csv),
    ".jsonl": (_write_jsonl, _read_jsonl),
}
TABLE_SUFFIXES = tuple(TABLE_FORMATS)
