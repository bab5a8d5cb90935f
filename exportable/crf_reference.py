"""Plain-numpy Viterbi: the reference the exported CRF (exportable.blocks.crf) is held to.

Written independently of the torch block, one row at a time: select the row's real positions,
decode them with the textbook recursion, put PAD_TAG (-1) everywhere else. It computes in the
dtype it is given (float32 for parity, so the sums happen in the same order and precision as
the artifact; float64 for the brute-force check in tests/test_crf.py).
"""

from __future__ import annotations

import numpy as np

PAD_TAG = -1


def viterbi(emissions: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray):
    """emissions [L, T] (L >= 1) -> (best path [L] int64, its score as emissions.dtype)."""
    length, num_tags = emissions.shape
    dtype = emissions.dtype
    transitions, start, end = (np.asarray(a, dtype) for a in (transitions, start, end))
    score = start + emissions[0]
    back = np.zeros((length, num_tags), np.int64)
    for t in range(1, length):
        cand = score[:, None] + transitions  # [prev, next]
        back[t] = cand.argmax(axis=0)  # first maximum on ties, as torch.max and ONNX ArgMax
        score = cand.max(axis=0) + emissions[t]
    final = score + end
    path = [int(final.argmax())]
    for t in range(length - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return np.array(path[::-1], np.int64), final.max().astype(dtype)


def path_score(emissions, transitions, start, end, path) -> float:
    """Score of one given path, summed in float64."""
    e = np.asarray(emissions, np.float64)
    total = float(start[path[0]]) + float(end[path[-1]]) + sum(float(e[t, k]) for t, k in enumerate(path))
    return total + sum(float(transitions[a, b]) for a, b in zip(path[:-1], path[1:]))


def decode_batch(emissions: np.ndarray, mask: np.ndarray, transitions, start, end):
    """emissions [B, S, T], mask [B, S] (nonzero = real) -> (tags [B, S] int64, score [B]).

    A row's sequence is its masked-in positions in order; other positions get PAD_TAG; a row
    with none gets score 0."""
    batch, seq, _ = emissions.shape
    tags = np.full((batch, seq), PAD_TAG, np.int64)
    scores = np.zeros(batch, emissions.dtype)
    for b in range(batch):
        where = np.flatnonzero(mask[b])
        if where.size:
            tags[b, where], scores[b] = viterbi(emissions[b, where], transitions, start, end)
    return tags, scores
