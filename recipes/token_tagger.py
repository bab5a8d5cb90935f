"""token_tagger: a BERT token classifier + CRF, Viterbi decoding inside the artifact.

Everything generic (the CRF folder format, the scripted Viterbi, the 1..128 length sweep) is
exportable.families.token_tagger.TokenTaggerFamily; this recipe declares the default model: the
bundled all-MiniLM-L6-v2 encoder with a seeded Linear(384, 9) head and a seeded CRF over 9 BIO
tags (random continuous weights: no real tagger ships offline). Exact path parity across two fp32
BERT implementations needs no near-ties: with these weights the smallest margin of a decision on
a validation path is 5e-4, the largest emission difference ONNX vs eager 2e-5.
"""

from __future__ import annotations

import torch

from exportable.blocks.crf import CRF
from exportable.families.token_tagger import TokenTaggerFamily, tagger_options
from exportable.recipe import Case
from exportable.registry import register

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
SEED = 0
HEAD_STD = 0.25  # MiniLM hidden states have norm ~9: emissions of std ~2, comparable to transitions


@register
class TokenTagger(TokenTaggerFamily):
    name = "token_tagger"
    summary = "BERT token classifier + CRF Viterbi (default MiniLM, seeded 9-tag BIO head) -> tags, score"
    options = tagger_options("the bundled all-MiniLM-L6-v2, seeded head and CRF")

    def default_tags(self) -> list[str]:
        return list(TAGS)

    def default_source_name(self) -> str:
        return f"{self.default_model_name} + seeded {len(TAGS)}-tag head and CRF (seed {SEED})"

    def make_default_head(self, model) -> None:
        head, gen = model.classifier, torch.Generator().manual_seed(SEED)
        with torch.no_grad():  # the same head on every run
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * HEAD_STD)
            head.bias.copy_(torch.randn(head.bias.shape, generator=gen) * 0.5)

    def default_crf(self):
        return CRF.seeded(len(TAGS), seed=SEED + 1)

    def example_case(self) -> Case:
        return Case("example", ["Ada Lovelace worked with Charles Babbage in London.", "Short one."])
