"""TokenizerSettings: everything the BERT tokenizer graph needs, read from a model's own files.

Precedence follows transformers' BertTokenizer: tokenizer.json supplies the vocabulary, the
WordPiece options and the post-processor; tokenizer_config.json's do_lower_case, strip_accents
and tokenize_chinese_chars override the normalizer stored in tokenizer.json (transformers
rebuilds the normalizer from them); vocab.txt is the fallback when there is no tokenizer.json.
Anything the graph cannot reproduce exactly is refused with a ValueError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

SPECIAL_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                    "mask_token": "[MASK]"}
# transformers uses a huge sentinel for "no limit"; a graph needs a real number.
_NO_LIMIT = 10**6


class TokenizerError(InputError, ValueError):
    """A tokenizer the graph cannot reproduce exactly. A ValueError for callers that catch
    that, an InputError so the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class SpecialToken:
    content: str
    id: int
    type_id: int = 0


@dataclass(frozen=True)
class TokenizerSettings:
    """A WordPiece (BERT) tokenizer, fully described. Build with `from_pretrained`."""

    vocab: dict[str, int] = field(repr=False)
    unk_token: str
    continuing_subword_prefix: str
    max_input_chars_per_word: int
    lowercase: bool
    strip_accents: bool | None  # None: follow `lowercase`, as HF does
    handle_chinese_chars: bool
    clean_text: bool
    added_tokens: dict[str, int]  # matched verbatim in the raw text before normalisation
    cls: SpecialToken
    sep: SpecialToken
    pad: SpecialToken
    max_length: int
    source: str = ""

    @property
    def strips_accents(self) -> bool:
        return self.lowercase if self.strip_accents is None else self.strip_accents

    @property
    def unk_id(self) -> int:
        return self.added_tokens.get(self.unk_token, self.vocab.get(self.unk_token))

    @classmethod
    def from_pretrained(cls, model_dir, max_length: int | None = None) -> TokenizerSettings:
        """Read tokenizer.json / tokenizer_config.json / special_tokens_map.json / vocab.txt from
        `model_dir`. `max_length` defaults to the config's model_max_length. Raises ValueError,
        naming the file, for anything the graph cannot reproduce exactly."""
        return read_settings(Path(model_dir), max_length)

    def metadata(self) -> dict:
        """Preprocessing settings for the artifact's metadata_props (JSON-serialisable)."""
        return {
            "tokenizer": "wordpiece",
            "source": self.source,
            "vocab_size": len(self.vocab),
            "lowercase": self.lowercase,
            "strip_accents": self.strips_accents,
            "handle_chinese_chars": self.handle_chinese_chars,
            "clean_text": self.clean_text,
            "max_length": self.max_length,
            "max_input_chars_per_word": self.max_input_chars_per_word,
            "continuing_subword_prefix": self.continuing_subword_prefix,
            "padding": "longest, right",
            "truncation": "right",
            "special_tokens": {
                "cls": [self.cls.content, self.cls.id], "sep": [self.sep.content, self.sep.id],
                "pad": [self.pad.content, self.pad.id], "unk": [self.unk_token, self.unk_id],
                "added": dict(sorted(self.added_tokens.items(), key=lambda kv: kv[1])),
            },
        }


def _load_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None


def _token_text(value) -> str | None:
    """A special token as written in tokenizer_config.json / special_tokens_map.json."""
    return value.get("content") if isinstance(value, dict) else value


def _read_vocab(model_dir: Path, tok_json: dict) -> tuple[dict[str, int], dict]:
    """(vocab, WordPiece options) from tokenizer.json, else vocab.txt."""
    if tok_json:
        model = tok_json.get("model") or {}
        if model.get("type") != "WordPiece":
            raise TokenizerError(f"{model_dir / 'tokenizer.json'}: model type {model.get('type')!r} is not supported; "
                             "only WordPiece (BERT-style) tokenizers can be built into a graph")
        return dict(model["vocab"]), model
    vocab_txt = model_dir / "vocab.txt"
    if not vocab_txt.is_file():
        raise TokenizerError(f"{model_dir}: neither tokenizer.json nor vocab.txt found; pass the folder of a "
                         "BERT-style (WordPiece) tokenizer")
    lines = vocab_txt.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {tok: i for i, tok in enumerate(lines)}, {}


def _check_pipeline(path: Path, tok_json: dict) -> dict:
    """The tokenizer.json components must be the BERT ones; returns the normalizer's fields."""
    if not tok_json:
        return {}
    norm = tok_json.get("normalizer") or {}
    if norm and norm.get("type") != "BertNormalizer":
        raise TokenizerError(f"{path}: normalizer {norm.get('type')!r} is not supported (need BertNormalizer)")
    pre = tok_json.get("pre_tokenizer") or {}
    if pre and pre.get("type") != "BertPreTokenizer":
        raise TokenizerError(f"{path}: pre_tokenizer {pre.get('type')!r} is not supported (need BertPreTokenizer)")
    return norm


def _template(path: Path, tok_json: dict, specials: dict[str, str]) -> tuple[tuple[str, int], ...]:
    """((token, type_id) for [CLS], (None, type_id of the text), (token, type_id) for [SEP])."""
    post = tok_json.get("post_processor") if tok_json else None
    if not post:
        return ((specials["cls_token"], 0), (None, 0), (specials["sep_token"], 0))
    if post.get("type") == "BertProcessing":
        return ((post["cls"][0], 0), (None, 0), (post["sep"][0], 0))
    if post.get("type") != "TemplateProcessing":
        raise TokenizerError(f"{path}: post_processor {post.get('type')!r} is not supported "
                         "(need TemplateProcessing or BertProcessing)")
    single = post.get("single") or []
    kinds = [next(iter(piece)) for piece in single]
    if kinds != ["SpecialToken", "Sequence", "SpecialToken"]:
        raise TokenizerError(f"{path}: post_processor template {kinds} is not supported; need [CLS] $A [SEP]")
    cls_tok, seq, sep_tok = (piece[kind] for piece, kind in zip(single, kinds))
    for tok in (cls_tok, sep_tok):
        ids = post["special_tokens"][tok["id"]]["ids"]
        if len(ids) != 1:
            raise TokenizerError(f"{path}: special token {tok['id']!r} maps to {len(ids)} ids; need exactly one")
    return ((cls_tok["id"], cls_tok["type_id"]), (None, seq["type_id"]), (sep_tok["id"], sep_tok["type_id"]))


def _added_tokens(path: Path, tok_json: dict, config: dict, specials: dict[str, str],
                  vocab: dict[str, int]) -> dict[str, int]:
    """Tokens HF matches verbatim in the raw text: named specials plus tokenizer.json added_tokens."""
    entries = [(t, path) for t in (tok_json.get("added_tokens") or [])]
    entries += [({**t, "id": int(i)}, path.with_name("tokenizer_config.json"))
                for i, t in (config.get("added_tokens_decoder") or {}).items()]
    added: dict[str, int] = {}
    for tok, where in entries:
        unsupported = [k for k in ("lstrip", "rstrip", "single_word", "normalized") if tok.get(k)]
        if unsupported:
            raise TokenizerError(f"{where}: added token {tok['content']!r} sets {unsupported}; only verbatim added "
                             "tokens (all four false) are supported")
        added[tok["content"]] = int(tok["id"])
    for name in SPECIAL_NAMES:
        content = specials[name]
        if content not in added and content in vocab:
            added[content] = vocab[content]
    return added


def _is_ascii_punct(ch: str) -> bool:
    # HF's is_bert_punc counts these ASCII ranges as punctuation whatever their Unicode category.
    return 33 <= ord(ch) <= 47 or 58 <= ord(ch) <= 64 or 91 <= ord(ch) <= 96 or 123 <= ord(ch) <= 126


def _check_added(path: Path, added: dict[str, int], vocab: dict[str, int], prefix: str) -> None:
    """Added tokens join the WordPiece vocabulary (so the op can emit them); that must not change
    how ordinary words split. Safe: the vocab already maps the text to the same id, or the text
    (less a leading ##) holds ASCII punctuation next to something else, which no ordinary word
    can contain (the pre-tokenizer isolates every punctuation character)."""
    for content, idx in added.items():
        if not content or any(ch.isspace() for ch in content):
            raise TokenizerError(f"{path}: added token {content!r} is empty or holds whitespace; not supported")
        if content in vocab:
            if vocab[content] != idx:
                raise TokenizerError(f"{path}: added token {content!r} has id {idx} but the vocab maps it to "
                                 f"{vocab[content]}; not supported")
            continue
        core = content[len(prefix):] if prefix and content.startswith(prefix) else content
        if len(core) < 2 or not any(_is_ascii_punct(ch) for ch in core):
            raise TokenizerError(f"{path}: added token {content!r} is not in the vocabulary and could collide with "
                             "ordinary word pieces; not supported")


def read_settings(model_dir: Path, max_length: int | None) -> TokenizerSettings:
    if not model_dir.is_dir():
        raise TokenizerError(f"{model_dir}: not a folder; pass the folder holding tokenizer.json or vocab.txt")
    json_path = model_dir / "tokenizer.json"
    config_path = model_dir / "tokenizer_config.json"
    config = _load_json(config_path)
    special_map = _load_json(model_dir / "special_tokens_map.json")
    tok_json = _load_json(json_path)

    # No check of tokenizer_class: the kind is decided by the pipeline itself (exportable.text.plan),
    # and a WordPiece pipeline of any class (Electra, MPNet's ...) is read the same way.
    for side in ("padding_side", "truncation_side"):
        if config.get(side, "right") != "right":
            raise TokenizerError(f"{config_path}: {side}={config[side]!r} is not supported; only 'right'")

    vocab, wordpiece = _read_vocab(model_dir, tok_json)
    norm = _check_pipeline(json_path, tok_json)
    specials = {name: _token_text(config.get(name)) or _token_text(special_map.get(name)) or DEFAULT_SPECIALS[name]
                for name in SPECIAL_NAMES}
    if not norm.get("clean_text", True):
        # Without clean_text a NUL byte would have to reach the ortx ops, which read C strings.
        raise TokenizerError(f"{json_path}: clean_text=false is not supported")

    template = _template(json_path, tok_json, specials)
    (cls_tok, cls_type), (_, text_type), (sep_tok, sep_type) = template
    added = _added_tokens(json_path, tok_json, config, specials, vocab)
    for tok in (cls_tok, sep_tok):  # HF matches these in the text even if no list names them
        if tok not in added and tok in vocab:
            added[tok] = vocab[tok]
    _check_added(json_path, added, vocab, wordpiece.get("continuing_subword_prefix", "##"))
    ids = {**vocab, **added}
    if text_type != 0:
        raise TokenizerError(f"{json_path}: the text's type id is {text_type}; only 0 is supported")
    for tok in (cls_tok, sep_tok, specials["pad_token"], wordpiece.get("unk_token", specials["unk_token"])):
        if tok not in ids:
            raise TokenizerError(f"{model_dir}: special token {tok!r} is not in the vocabulary")

    length = max_length if max_length is not None else config.get("model_max_length")
    if length is None or not isinstance(length, int) or length >= _NO_LIMIT:
        raise TokenizerError(f"{config_path}: no usable model_max_length ({length!r}); pass max_length=")
    if length < 2:
        raise TokenizerError(f"max_length={length} leaves no room for [CLS] and [SEP]; use 2 or more")

    return TokenizerSettings(
        vocab=vocab,
        unk_token=wordpiece.get("unk_token", specials["unk_token"]),
        continuing_subword_prefix=wordpiece.get("continuing_subword_prefix", "##"),
        max_input_chars_per_word=int(wordpiece.get("max_input_chars_per_word", 100)),
        lowercase=bool(config.get("do_lower_case", norm.get("lowercase", True))),
        strip_accents=config.get("strip_accents", norm.get("strip_accents")),
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", norm.get("handle_chinese_chars", True))),
        clean_text=True,
        added_tokens=added,
        cls=SpecialToken(cls_tok, ids[cls_tok], cls_type),
        sep=SpecialToken(sep_tok, ids[sep_tok], sep_type),
        pad=SpecialToken(specials["pad_token"], ids[specials["pad_token"]], 0),
        max_length=length,
        source=str(config.get("name_or_path") or model_dir.name),
    )
