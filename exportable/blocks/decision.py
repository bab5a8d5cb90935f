"""Decision heads: a classifier's logits -> the decision a user acts on, inside the graph.

    SingleLabelDecision()             logits [B, C] -> label_id [B] int64, score [B] float32
                                      (softmax, then the most probable class; ties: lowest id)
    MultiLabelDecision(thresholds)    logits [B, C] -> scores [B, C] float32, labels [B, C] bool
                                      (sigmoid, then scores >= thresholds[c], per label)
    SequenceClassifierDecision(model, head)   a transformers *ForSequenceClassification + a head,
                                      ids in (explicit arguments: torch.export matches the signature)

The rule is `>=`: a score exactly at its threshold is a positive (so threshold 0 marks every label,
threshold 1 only scores that saturate to 1.0). The thresholds are a float32 buffer: graph constants.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class SingleLabelDecision(nn.Module):
    def forward(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        probabilities = torch.softmax(logits.to(torch.float32), dim=-1)
        # One spare row, sliced off after: ONNX Runtime's ReduceMax/ArgMax hand back their [0, C]
        # input unchanged for an empty batch instead of a [0] result.
        padded = torch.cat([probabilities, probabilities.new_zeros(1, probabilities.shape[-1])])
        score, label_id = padded.max(dim=-1)
        n = probabilities.shape[0]
        return label_id[:n].to(torch.int64), score[:n]


class MultiLabelDecision(nn.Module):
    def __init__(self, thresholds: Sequence[float]):
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(list(thresholds), dtype=torch.float32))

    def forward(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        scores = torch.sigmoid(logits.to(torch.float32))
        return scores, scores >= self.thresholds


class SequenceClassifierDecision(nn.Module):
    def __init__(self, classifier: nn.Module, head: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        named = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            named["token_type_ids"] = token_type_ids
        return self.head(self.classifier(**named).logits)
