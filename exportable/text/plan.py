"""TokenizerPlan: what the in-graph tokenizer of any supported kind needs, read from the Hugging
Face tokenizer *as loaded* (transformers 5 rebuilds RoBERTa/XLM-R/Llama pipelines from the class's
code, so the loaded backend's JSON, `tokenizer.backend_tokenizer.to_str()`, is what really runs;
the tokenizer.json on disk may differ).

The kind is decided by the pipeline's own components, never by `tokenizer_class`:

    wordpiece          model WordPiece                      (exportable.text.settings, bert_graph)
    bytelevel-bpe      model BPE + a ByteLevel pre-tokenizer (GPT-2, RoBERTa, BART, GPT-Neo, Phi)
    unigram            model Unigram + Metaspace             (XLM-R, T5, ALBERT, multilingual-e5)
    sentencepiece-bpe  model BPE + Metaspace, byte fallback  (Llama, Mistral)

A component the graph cannot reproduce is refused with one line naming it and its path in
tokenizer.json (TokenizerError); nothing is silently tokenized differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .settings import TokenizerError

KINDS = ("wordpiece", "bytelevel-bpe", "unigram", "sentencepiece-bpe")
# transformers uses a huge sentinel for "no limit"; a graph needs a real number.
NO_LIMIT = 10**6


@dataclass(frozen=True)
class TokenizerPlan:
    kind: str
    backend: dict = field(repr=False)       # the loaded pipeline (tokenizer.json schema)
    prefix: tuple[tuple[int, int], ...]     # (id, type_id) of the specials before the text
    suffix: tuple[tuple[int, int], ...]     # ... and after it
    text_type: int
    pad: tuple[int, int]
    padding_side: str                       # "right" | "left"
    truncation_side: str
    max_length: int
    outputs: tuple[str, ...]                # input_ids, attention_mask[, token_type_ids]
    special_ids: tuple[int, ...]            # what skip_special_tokens drops when decoding
    source: str = ""

    @property
    def room(self) -> int:
        """Content tokens that fit beside the specials."""
        return self.max_length - len(self.prefix) - len(self.suffix)

    def metadata(self) -> dict:
        model = self.backend.get("model") or {}
        return {
            "tokenizer": self.kind,
            "source": self.source,
            "vocab_size": len(model.get("vocab") or ()),
            "max_length": self.max_length,
            "padding": f"longest, {self.padding_side}",
            "truncation": self.truncation_side,
            "prefix_ids": [i for i, _ in self.prefix],
            "suffix_ids": [i for i, _ in self.suffix],
            "pad_id": self.pad[0],
        }


def kind_of(backend: dict) -> str:
    """The kind of a tokenizer.json pipeline, or TokenizerError naming what is not supported."""
    model = (backend.get("model") or {}).get("type")
    pre = _flatten(backend.get("pre_tokenizer"), "pretokenizers")
    pre_types = [p.get("type") for p in pre]
    if model == "WordPiece":
        return "wordpiece"
    if model == "BPE" and "ByteLevel" in pre_types:
        return "bytelevel-bpe"
    if model == "BPE" and ("Metaspace" in pre_types or _replaces_space(backend)):
        return "sentencepiece-bpe"
    if model == "Unigram":
        return "unigram"
    raise TokenizerError(f"tokenizer.json model.type {model!r} with pre_tokenizer {pre_types or None} is not "
                         f"supported; supported kinds: {', '.join(KINDS)}")


def plan_from_hf(tokenizer, max_length: int | None = None, source: str = "") -> TokenizerPlan:
    """The plan for a transformers fast tokenizer as loaded (`AutoTokenizer.from_pretrained(DIR)`)."""
    backend = backend_json(tokenizer, source)
    kind = kind_of(backend)
    prefix, text_type, suffix = template(backend, tokenizer)
    length = max_length if max_length is not None else tokenizer.model_max_length
    if not isinstance(length, int) or length >= NO_LIMIT:
        raise TokenizerError(f"{source}: no usable model_max_length ({length!r}); pass max_length=")
    if length <= len(prefix) + len(suffix):
        raise TokenizerError(f"max_length={length} leaves no room beside the special tokens; use more")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # GPT-2 has no pad token; generation pads with eos, as `pad_token_id=eos` does
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    outputs = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names
                    or n == "input_ids")
    return TokenizerPlan(
        kind=kind, backend=backend, prefix=prefix, suffix=suffix, text_type=text_type,
        pad=(int(pad_id), int(getattr(tokenizer, "pad_token_type_id", 0) or 0)),
        padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
        max_length=int(length), outputs=outputs, special_ids=tuple(sorted(tokenizer.all_special_ids)),
        source=source or str(getattr(tokenizer, "name_or_path", "")))


def backend_json(tokenizer, source: str = "") -> dict:
    """The pipeline that really runs (tokenizer.json schema) of a transformers tokenizer as loaded."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TokenizerError(f"{source or type(tokenizer).__name__}: not a fast (tokenizers-backed) tokenizer; "
                             "save it with a fast tokenizer so tokenizer.json describes its pipeline")
    return json.loads(tokenizer.backend_tokenizer.to_str())


def template(backend: dict, tokenizer) -> tuple[tuple, int, tuple]:
    """(prefix specials, the text's type id, suffix specials) of a single text, from the post_processor."""
    post = backend.get("post_processor")
    pieces = _flatten(post, "processors")
    for i, piece in enumerate(pieces):
        where = "post_processor" if len(pieces) == 1 else f"post_processor.processors[{i}]"
        kind = piece.get("type")
        if kind == "ByteLevel":
            continue  # offsets only
        if kind in ("RobertaProcessing", "BertProcessing"):
            cls_tok, sep_tok = piece["cls"], piece["sep"]
            return ((int(cls_tok[1]), 0),), 0, ((int(sep_tok[1]), 0),)
        if kind == "TemplateProcessing":
            return _from_template(piece, where)
        raise TokenizerError(f"tokenizer.json {where}: {kind!r} is not supported "
                             "(TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel)")
    return (), 0, ()


def _from_template(post: dict, where: str) -> tuple[tuple, int, tuple]:
    single = post.get("single") or []
    kinds = [next(iter(piece)) for piece in single]
    if kinds.count("Sequence") != 1:
        raise TokenizerError(f"tokenizer.json {where}.single: {kinds} is not supported; need one $A")
    at = kinds.index("Sequence")
    specials = post.get("special_tokens") or {}

    def ids(pieces):
        out = []
        for piece in pieces:
            tok = piece["SpecialToken"]
            out += [(int(i), int(tok.get("type_id", 0))) for i in specials[tok["id"]]["ids"]]
        return tuple(out)

    return ids(single[:at]), int(single[at]["Sequence"].get("type_id", 0)), ids(single[at + 1:])


def _flatten(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [c for c in component.get(key) or [] if c]
    return [component]


def _replaces_space(backend: dict) -> bool:
    """Llama-style normalizers: Prepend('▁') + Replace(' ', '▁') instead of a Metaspace pre-tokenizer."""
    return any(n.get("type") == "Replace" and n.get("content") == "\u2581"
               for n in _flatten(backend.get("normalizer"), "normalizers"))
