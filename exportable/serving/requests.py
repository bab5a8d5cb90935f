"""One HTTP request body -> one validated feed, or a 4xx with a one-line reason; and the
dynamic batch: concurrent requests' feeds concatenated into one artifact call, then split.

Kept apart from Ray Serve so the server's only job is plumbing (exportable.serving.server).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..runtime import validate_feed
from .rows import BATCH_DIM, first_line, to_json_value

MAX_BODY_BYTES = 16 * 2**20


class RequestError(ValueError):
    """The request cannot be answered: `status` (400, 413, 422) and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def parse_request(body: bytes, specs: Mapping[str, tuple[str, list]]) -> dict[str, np.ndarray]:
    """`{"inputs": {name: value}}` as the artifact's feed (each value a list of rows for a batched
    artifact, e.g. {"text": ["a", "b"]})."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body of {len(body):,} bytes is over the {MAX_BODY_BYTES:,}-byte limit; "
                                "send fewer rows per request")
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON ({first_line(exc)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), dict):
        raise RequestError(400, 'body must be a JSON object {"inputs": {name: value}}; the artifact takes '
                                f"{sorted(specs)}")
    inputs = document["inputs"]
    feed = {}
    for name, value in inputs.items():
        dtype = specs.get(name, ("string", None))[0]
        try:
            feed[name] = np.array(value, dtype=object) if dtype == "string" else _numeric(name, value, dtype)
        except ValueError as exc:
            raise RequestError(422, str(exc)) from None
    try:
        feed = validate_feed(feed, specs)
    except InputError as exc:
        raise RequestError(422, str(exc)) from None
    if batched(specs) and len({len(v) for v in feed.values()}) > 1:
        raise RequestError(422, "inputs hold different numbers of rows; send one value per row for every input")
    return feed


def _numeric(name: str, value, dtype: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind not in ("b" if dtype == "bool" else "biuf"):
        raise ValueError(f"input {name!r} must hold {dtype} numbers in nested lists of one shape")
    return array.astype(dtype)


def batched(specs: Mapping[str, tuple[str, list]]) -> bool:
    return all(shape and shape[0] == BATCH_DIM for _, shape in specs.values())


def run_together(runner, feeds: Sequence[dict]) -> list:
    """Run concurrent requests' feeds as one call when the artifact is batched (concatenated on
    the batch dim, outputs split back); a call that fails runs each request alone, so one
    request's refusal is its own. Each answer is {"outputs": ..., "batched": requests in its
    call} or a RequestError."""
    if len(feeds) > 1 and batched(runner.input_specs):
        counts = [len(next(iter(f.values()))) for f in feeds]
        try:
            outputs = runner.run({n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]})
            if all(len(v) == sum(counts) for v in outputs.values()):
                bounds = np.cumsum([0, *counts])
                return [{"outputs": {n: to_json_value(v[a:b]) for n, v in outputs.items()}, "batched": len(feeds)}
                        for a, b in zip(bounds[:-1], bounds[1:])]
        except (InputError, ValueError):
            pass  # answer each request alone below
    return [_run_one(runner, feed) for feed in feeds]


def _run_one(runner, feed: dict):
    try:
        return {"outputs": {n: to_json_value(v) for n, v in runner.run(feed).items()}, "batched": 1}
    except InputError as exc:
        return RequestError(422, str(exc))
