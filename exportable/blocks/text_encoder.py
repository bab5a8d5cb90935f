"""Transformer encoder + pooling (+ normalise): the sentence-embedding head as one module."""

from typing import Optional

import torch
from torch import nn

from .pooling import POOLINGS, L2Normalize


class SentenceEncoder(nn.Module):
    """Explicit arguments, not **kwargs: torch.export matches dynamic_shapes to the signature."""

    def __init__(self, transformer: nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.transformer = transformer
        self.pooling = POOLINGS[pooling]()
        self.normalize = L2Normalize() if normalize else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        named = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            named["token_type_ids"] = token_type_ids
        tokens = self.transformer(**named).last_hidden_state
        return self.normalize(self.pooling(tokens, attention_mask))
