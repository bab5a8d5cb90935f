"""Sentence pooling over token embeddings, written so every op exports to plain ONNX."""

import torch
from torch import nn


class MaskedMeanPooling(nn.Module):
    """Mean over real tokens. The denominator is clamped (1e-9, as sentence-transformers does)
    so an all-padding row gives zeros instead of NaN."""

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class ClsPooling(nn.Module):
    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class MaskedMaxPooling(nn.Module):
    """Max over real tokens; padding is pushed to -1e9 first (sentence-transformers' rule)."""

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).expand(tokens.shape)
        return torch.where(mask == 0, torch.full_like(tokens, -1e9), tokens).max(dim=1).values


POOLINGS = {"mean": MaskedMeanPooling, "cls": ClsPooling, "max": MaskedMaxPooling}


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, p=2.0, dim=1)
