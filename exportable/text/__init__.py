"""Tokenizers as ONNX graphs, with exact parity to the Hugging Face tokenizer they come from.

    settings = TokenizerSettings.from_pretrained(model_dir, max_length=256)
    model = build_tokenizer_graph(settings, opset=17)   # onnx.ModelProto
    settings.metadata()                                  # for the artifact's metadata_props

The graph takes `text`, a string tensor [batch], and returns `input_ids`, `attention_mask` and
`token_type_ids`, int64 [batch, sequence]: what `tokenizer(texts, padding=True, truncation=True,
max_length=max_length)` of the HF fast tokenizer returns. Run it with onnxruntime-extensions
registered (custom-op domain ai.onnx.contrib); below opset 20 it also uses ONNX Runtime's own
com.microsoft Tokenizer op.

Other kinds (byte-level BPE, Unigram, SentencePiece BPE) are built from the tokenizer as loaded:

    plan = plan_from_hf(AutoTokenizer.from_pretrained(DIR), max_length=256)   # text/plan.py
    model = build_text_graph(plan, opset=18)                                  # text/encode_graph.py
    decoder = build_decode_graph(plan, opset=18)                              # text/decode_graph.py

See docs/tokenizers.md. Choices and limits of the WordPiece graph:
- An empty batch returns shape [0, 2] (an empty text is [CLS] [SEP]); HF has no answer for it.
- Right padding and truncation, clean_text on, added tokens matched verbatim (no
  lstrip/rstrip/single_word/normalized). Anything else raises TokenizerError (a ValueError and
  an exportable InputError) naming the file.
- NUL bytes become \\x01 on the way in (the ortx ops read C strings); both are dropped by
  clean_text, so ids do not change.
- NFD's reordering of adjacent combining marks is not reproduced; see normalize.py for why this
  cannot change ids unless the vocabulary holds a surviving mark (the builder warns then).

Modules: settings.py (read the files), normalize.py (the per-character table, probed from HF),
bert_graph.py (the stages), wordpiece.py (WordPiece + [UNK] fix), ragged.py (ragged -> padded,
templates), corpus.py (seeded test corpus); plan.py, encode_graph.py, added.py, bytelevel.py,
sentencepiece.py (+ spm_model.py, precompiled.py), decode_graph.py, gpt2.py for the other
kinds; nodes are built with exportable.onnx_builder (deterministic names).
"""

from .bert_graph import build_tokenizer_graph
from .settings import SpecialToken, TokenizerError, TokenizerSettings

__all__ = ["SpecialToken", "TokenizerError", "TokenizerSettings", "build_tokenizer_graph"]
