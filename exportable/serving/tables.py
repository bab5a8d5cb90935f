"""Read rows from JSONL, CSV or Parquet, streaming (millions of rows never sit in memory), and
write result rows as JSONL or Parquet.

Every reader yields (row number, row) where row is a dict, or a RowError for a line that is not
a row at all (broken JSON), so that line is refused and counted like any other bad row.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from .rows import RowError, parse_json_line

INPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
OUTPUT_SUFFIXES = (".jsonl", ".parquet")


def check_paths(source: Path, output: Path) -> None:
    if source.suffix not in INPUT_SUFFIXES:
        raise InputError(f"input {source.name}: expected a {', '.join(INPUT_SUFFIXES)} file")
    if not source.is_file():
        raise InputError(f"no input file at {source}; pass a {', '.join(INPUT_SUFFIXES)} file")
    if output.suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"output {output.name}: expected a name ending in {' or '.join(OUTPUT_SUFFIXES)}")
    if not output.parent.is_dir():
        raise InputError(f"output folder {output.parent} does not exist; create it first")
    if output.resolve() == source.resolve():
        raise InputError("the output would overwrite the input; choose another output name")


def count_rows(source: Path) -> int:
    if source.suffix == ".parquet":
        return _parquet_file(source).metadata.num_rows
    if source.suffix == ".csv":
        with _open_csv(source) as handle:
            return max(0, sum(1 for _ in csv.reader(handle)) - 1)
    with source.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def read_rows(source: Path, start: int = 0) -> Iterator[tuple[int, dict | RowError]]:
    """(row number, row) from row `start` on; rows before it are skipped unparsed where possible."""
    reader = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}[source.suffix]
    return reader(source, start)


def _jsonl_rows(source: Path, start: int):
    number = 0
    with source.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue  # a blank line is not a row (Ray's read_text drops them too)
            if number >= start:
                yield number, _decode_line(raw)
            number += 1


def _decode_line(raw: bytes) -> dict | RowError:
    try:
        return parse_json_line(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return RowError(f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})")
    except RowError as exc:
        return exc


def _open_csv(source: Path):
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long text cell is a row, not an error
    return source.open(newline="", encoding="utf-8", errors="replace")


def _csv_rows(source: Path, start: int):
    with _open_csv(source) as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            if number >= start:
                # a short line leaves its last fields None (missing), not ""
                yield number, {k: v for k, v in row.items() if k is not None}


def _parquet_file(source: Path):
    import pyarrow.parquet as pq  # noqa: PLC0415  (pyarrow comes with the scale extra)

    return pq.ParquetFile(source)


def _parquet_rows(source: Path, start: int):
    number = 0
    for batch in _parquet_file(source).iter_batches(batch_size=4096):
        if number + batch.num_rows <= start:
            number += batch.num_rows
            continue
        for row in batch.slice(max(0, start - number)).to_pylist():
            yield max(number, start), row
            number = max(number, start) + 1


def write_part(rows: list[dict], path: Path) -> None:
    """One part of the output, written whole (the caller renames it into place)."""
    if path.suffix == ".parquet":
        import pyarrow as pa  # noqa: PLC0415  (pyarrow comes with the scale extra)
        import pyarrow.parquet as pq  # noqa: PLC0415  (pyarrow comes with the scale extra)

        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def join_parts(parts: list[Path], target: Path) -> None:
    """Concatenate parts (in order) into `target`: JSONL bytewise, Parquet batch by batch."""
    if target.suffix != ".parquet":
        with target.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        return
    import pyarrow as pa  # noqa: PLC0415  (pyarrow comes with the scale extra)
    import pyarrow.parquet as pq  # noqa: PLC0415  (pyarrow comes with the scale extra)

    parts = [p for p in parts if pq.ParquetFile(p).metadata.num_rows]  # an all-refused part has no columns
    if not parts:
        pq.write_table(pa.table({"id": pa.array([], pa.int64())}), target)
        return
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:  # one part in memory at a time
            table = pq.read_table(part)
            writer.write_table(table.cast(schema) if table.schema != schema else table)
