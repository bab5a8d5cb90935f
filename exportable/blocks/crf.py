"""Linear-chain CRF with Viterbi decoding written for export: script it, never trace it.

    crf = torch.jit.script(CRF(num_tags))        # the loop stays a loop: ONNX `Loop`, TorchScript loop
    tags, score = crf(emissions, mask)           # [batch, seq] int64, [batch] float32

Conventions (exportable.crf_reference is the plain-numpy statement of the same thing):
- `transitions[i, j]` scores tag i followed by tag j (pytorch-crf's convention); `start_transitions`
  and `end_transitions` score the first and last tag.
- The decoded sequence of a row is its positions where `mask` is nonzero, in order. Right
  padding (tokenizers), left padding and holes all mean the same thing: masked positions are
  skipped, and their tag is PAD_TAG (-1, never a valid tag id). A row with no real position has
  every tag PAD_TAG and score 0.
- `score` is the best path's total: start + emissions + transitions + end, in float32.

Why the loop looks the way it does:
- `torch.jit.trace` (and a torch.export capture) unrolls `for t in range(seq)` at the example's
  length, which decodes other lengths wrongly or not at all (tests/test_crf.py shows it).
- No in-place tensor op (`+=`, `x[:, t] = ...`) anywhere: the legacy ONNX exporter has silently
  dropped in-place updates inside scripted Viterbi loops (mead-baseline PR #705). Values are
  rebuilt with `torch.where` and history is a list stacked after the loop.
- One loop body for every position (the "no real token yet" state is a flag per row), so the
  first position needs no special case and masks of any shape are handled alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PAD_TAG = -1
CRF_FILE = "crf.safetensors"
KEYS = ("transitions", "start_transitions", "end_transitions")


class CRF(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"a CRF needs at least one tag, got num_tags={num_tags}")
        self.num_tags = num_tags
        self.pad_tag = PAD_TAG  # an attribute: TorchScript cannot read module globals
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))

    @classmethod
    def seeded(cls, num_tags: int, seed: int = 0, scale: float = 1.0) -> "CRF":
        """Continuous random scores (N(0, scale^2)): ties between paths have probability ~0."""
        crf = cls(num_tags)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in KEYS:
                param = getattr(crf, name)
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
        return crf

    # --- weights: one safetensors file with the three KEYS ---------------------------------------
    def save(self, path: str | Path) -> None:
        save_file({k: getattr(self, k).detach().contiguous() for k in KEYS}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "CRF":
        """Raise ValueError naming what is wrong (missing key, bad shape)."""
        state = load_file(str(path))
        missing = [k for k in KEYS if k not in state]
        if missing:
            raise ValueError(f"no tensor {missing[0]!r} (needs {', '.join(KEYS)})")
        trans = state["transitions"]
        if trans.ndim != 2 or trans.shape[0] != trans.shape[1]:
            raise ValueError(f"transitions must be [T, T], got {list(trans.shape)}")
        crf = cls(trans.shape[0])
        for k in KEYS[1:]:
            if tuple(state[k].shape) != (crf.num_tags,):
                raise ValueError(f"{k} must be [{crf.num_tags}], got {list(state[k].shape)}")
        crf.load_state_dict({k: state[k].float() for k in KEYS})
        return crf

    def numpy_params(self):
        return tuple(getattr(self, k).detach().numpy().copy() for k in KEYS)

    # --- Viterbi ---------------------------------------------------------------------------------
    def forward(self, emissions: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """emissions [batch, seq >= 1, T] float, mask [batch, seq] (nonzero = real token).
        Returns (tags [batch, seq] int64, score [batch] float32)."""
        emissions = emissions.to(torch.float32).transpose(0, 1)  # [seq, batch, T]: index time on dim 0
        real = mask.ne(0).transpose(0, 1)  # [seq, batch]
        seq_len = emissions.size(0)
        start = self.start_transitions.unsqueeze(0)  # [1, T]
        trans = self.transitions.unsqueeze(0)  # [1, T prev, T next]

        score = start.expand(emissions.size(1), self.num_tags)  # best score ending in each tag so far
        started = torch.zeros_like(real[0])  # per row: has a real token been seen yet
        history: List[torch.Tensor] = []
        for t in range(seq_len):
            best, best_prev = (score.unsqueeze(2) + trans).max(dim=1)
            step = torch.where(started.unsqueeze(1), best, start) + emissions[t]
            score = torch.where(real[t].unsqueeze(1), step, score)
            started = started.logical_or(real[t])
            history.append(best_prev)

        best_score, cur = (score + self.end_transitions.unsqueeze(0)).max(dim=1)
        pad = torch.full_like(cur, self.pad_tag)
        backwards: List[torch.Tensor] = []
        for i in range(seq_len):
            t = seq_len - 1 - i
            backwards.append(torch.where(real[t], cur, pad))
            prev = history[t].gather(1, cur.unsqueeze(1)).squeeze(1)
            cur = torch.where(real[t], prev, cur)
        # Reverse time as (seq-1) - arange(seq), not arange(seq-1, -1, -1): ONNX Runtime (1.31, at
        # its default optimisation level) fuses Gather(Range) into a Slice, which reads the -1
        # limit as "the last element" and returned an empty [batch, 0] result.
        order = (seq_len - 1) - torch.arange(seq_len, dtype=torch.long, device=emissions.device)
        tags = torch.stack(backwards, 0).index_select(0, order).transpose(0, 1)
        best_score = torch.where(started, best_score, torch.zeros_like(best_score))
        return tags, best_score


class CRFTagger(nn.Module):
    """A token classifier (anything returning `.logits` [batch, seq, T]) followed by CRF decoding.

    Explicit arguments, not **kwargs: exporters pass inputs positionally in this order."""

    def __init__(self, classifier: nn.Module, crf: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.crf = crf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        named = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            named["token_type_ids"] = token_type_ids
        logits = self.classifier(**named).logits
        return self.crf(logits, attention_mask)
