"""sentence_bert: a sentence-transformers BERT-family model as one artifact.

Original: `SentenceTransformer.encode`. Artifact: strings in (the model's tokenizer as graph
nodes, exportable.text), the encoder + masked pooling (+ L2 normalise when the model has a
Normalize module), `sentence_embedding` out. `--inputs ids` keeps the ids-in graph for users who
tokenize. Everything but these declarations is exportable.families.text.SentenceEncoderFamily.
"""

from __future__ import annotations

from exportable import samples
from exportable.families.text import INPUTS, SentenceEncoderFamily, model_option
from exportable.recipe import Case, Tolerance
from exportable.registry import register


@register
class SentenceBert(SentenceEncoderFamily):
    name = "sentence_bert"
    summary = "sentence-transformers encoder (default all-MiniLM-L6-v2) -> sentence_embedding"
    options = (model_option("a sentence-transformers model (SentenceTransformer.save(DIR))"), INPUTS)

    def tolerances(self):
        # The fp32 bar: max abs diff <= 1e-5 and cosine >= 0.99999 per row.
        return {"sentence_embedding": Tolerance(atol=1e-5, rtol=0.0, min_cosine=0.99999)}

    def example_case(self) -> Case:
        return Case("example", ["Exportable turns a model into one file.", "Short one."])

    def validation_cases(self) -> list[Case]:
        """>= 50 sentences of varied length at batch sizes 1, 3 and 17 (never the example's 2),
        with the edge cases: empty string, whitespace, and a text far over max length; in text
        mode the whole Unicode tokenizer corpus too."""
        texts = samples.sentences(53, seed=11)
        texts[4], texts[9], texts[20] = "", "   ", samples.long_text(400)
        return self.text_cases(texts, [1] * 5 + [3] * 4 + [17] * 2)
