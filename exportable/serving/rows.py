"""One table row <-> one artifact call's worth of input, and back.

A row is a dict read from JSONL, CSV or Parquet. RowFeeder checks each row against the
artifact's inputs *before* batching (a bad row must not sink its batch), converts it to arrays,
stacks rows into one feed, and splits the outputs back into one JSON-able dict per row.

An artifact is "batched" when every input's first dim is the symbolic `batch`; image
artifacts take one image per call (`image` uint8 [height, width, 3] or `image_bytes` uint8
[bytes]) and are fed one row at a time, from a column of file paths or bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

BATCH_DIM = "batch"
NUMERIC_KINDS = {"float32": "fiub", "float64": "fiub", "int64": "iub", "int32": "iub", "uint8": "iub", "bool": "b"}


class RowError(ValueError):
    """This row cannot be fed to the artifact: the one-line reason goes to the errors file."""


def parse_json_line(text: str) -> dict:
    """One JSONL line as a row; a broken line is a RowError, not the end of the run."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"line is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RowError(f"line is a JSON {type(row).__name__}, not an object with one field per input")
    return row


def row_id(row: Mapping, number: int):
    """The row's own `id` when it has one, else its 0-based row number."""
    given = row.get("id") if isinstance(row, Mapping) else None
    return number if given is None else given


def to_json_value(value):
    """A numpy output (array, scalar, string, bytes) as plain JSON-able Python."""
    if isinstance(value, np.ndarray):
        return [to_json_value(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class RowFeeder:
    def __init__(self, input_specs: Mapping[str, tuple[str, list]], output_names: Sequence[str],
                 base_dir: Path | None = None):
        self.specs = dict(input_specs)
        self.output_names = list(output_names)
        self.base_dir = base_dir  # relative image paths resolve against the input file's folder
        self.batched = all(shape and shape[0] == BATCH_DIM for _, shape in self.specs.values())

    def row_shape(self, name: str) -> list:
        shape = self.specs[name][1] or []
        return shape[1:] if self.batched else shape

    def convert(self, row) -> dict[str, np.ndarray]:
        """The row as one array per input (without the batch dim), or RowError with the reason."""
        if isinstance(row, RowError):
            raise row
        feed = {}
        for name, (dtype, _) in self.specs.items():
            if name not in row:
                raise RowError(f"missing field {name!r}; the artifact takes {sorted(self.specs)}")
            value = row[name]
            if value is None:
                raise RowError(f"field {name!r} is null")
            feed[name] = self._convert_value(name, dtype, value)
        return feed

    def _convert_value(self, name: str, dtype: str, value) -> np.ndarray:
        shape = self.row_shape(name)
        if dtype == "uint8" and not self.batched and (len(shape) in (1, 3)) and isinstance(value, (str, bytes)):
            return self._image(name, value, pixels=len(shape) == 3)
        if dtype == "string":
            array = np.array(value, dtype=object)
            if not all(isinstance(v, str) for v in array.reshape(-1)):
                raise RowError(f"field {name!r} must be text, got {_type_name(value)}")
        else:
            if isinstance(value, str):  # a CSV cell holding a JSON list or number
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise RowError(f"field {name!r} must be {dtype} values, got the text {value[:40]!r}") from None
            try:
                array = np.asarray(value)
            except ValueError:
                raise RowError(f"field {name!r} is a ragged list; expected shape {shape}") from None
            if array.dtype.kind not in NUMERIC_KINDS.get(dtype, "fiub") or array.dtype == object:
                raise RowError(f"field {name!r} must be {dtype} values, got {_type_name(value)}")
            array = array.astype(dtype)
        if array.ndim != len(shape) or any(isinstance(w, int) and w != g for w, g in zip(shape, array.shape)):
            raise RowError(f"field {name!r} must have shape {shape}, got {list(array.shape)}")
        return array

    def _image(self, name: str, value: str | bytes, pixels: bool) -> np.ndarray:
        data = value if isinstance(value, bytes) else self._read_file(name, value)
        if not pixels:
            return np.frombuffer(data, dtype=np.uint8)
        try:
            with Image.open(io.BytesIO(data)) as picture:
                return np.array(picture.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise RowError(f"field {name!r}: not a readable image ({first_line(exc)})") from None

    def _read_file(self, name: str, value: str) -> bytes:
        path = Path(value)
        if not path.is_absolute() and not path.exists() and self.base_dir is not None:
            path = self.base_dir / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise RowError(f"field {name!r}: cannot read image file {value!r} ({exc.strerror})") from None

    def feed(self, rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Converted rows stacked into one feed (raises ValueError when their shapes differ)."""
        if not self.batched:
            (row,) = rows
            return dict(row)
        return {name: np.stack([r[name] for r in rows]) for name in self.specs}

    def split(self, outputs: Mapping[str, np.ndarray], count: int) -> list[dict]:
        """The outputs of one call as one JSON-able dict per row."""
        if not self.batched:
            return [{n: to_json_value(np.asarray(outputs[n]) if not isinstance(outputs[n], np.ndarray) else outputs[n])
                     for n in self.output_names}]
        for name in self.output_names:
            if len(outputs[name]) != count:
                raise ValueError(f"output {name!r} has {len(outputs[name])} rows for {count} inputs")
        return [{n: to_json_value(outputs[n][i]) for n in self.output_names} for i in range(count)]


def _type_name(value) -> str:
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
