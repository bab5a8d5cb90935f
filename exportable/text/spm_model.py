"""A sentencepiece ModelProto built from a Hugging Face backend tokenizer.json, so that the ortx
SentencepieceTokenizer op (the sentencepiece library itself) runs HF's Unigram / byte-fallback
BPE model and returns HF's ids.

Piece i of the proto is HF id i, so the op's ids need no remapping.
  Unigram  pieces and scores as in model.vocab; the Precompiled normalizer's charsmap is copied,
           whitespace handled by sentencepiece as WhitespaceSplit + Metaspace(always) do.
  BPE      sentencepiece merges the adjacent pair whose merged piece scores highest; HF merges the
           pair of lowest rank. Scoring each piece -(rank of its first merge) makes the two agree
           when model.merges lists every split of each piece into two vocabulary pieces, in
           consecutive ranks (sentencepiece_problem checks this). Multi-character pieces no merge
           produces become CONTROL pieces, which sentencepiece never emits (HF cannot reach them).
"""

from __future__ import annotations

from ..errors import MissingDependency

try:
    from sentencepiece import sentencepiece_model_pb2 as spm_pb
except ImportError:  # only SentencePiece-kind exports need it
    spm_pb = None
BYTE_PIECES = {f"<0x{i:02X}>" for i in range(256)}
SCORE_BITS = 14
SCORE_STEP = 2.0 ** -SCORE_BITS
UNREACHABLE_SCORE = -1e9  # single characters: no merge produces them


def unigram_proto(backend: dict, rules: dict[str, str] | None = None) -> bytes:
    """`rules`: string -> replacement for sentencepiece's normalizer (longest match first)."""
    model = backend["model"]
    proto = _empty_proto("UNIGRAM", unk_id=model["unk_id"])
    kinds = _piece_type()
    for i, (piece, score) in enumerate(model["vocab"]):
        _add_piece(proto, piece, quantize(score), kinds.UNKNOWN if i == model["unk_id"] else kinds.NORMAL)
    spec = proto.normalizer_spec
    # The graph normalizes (precompiled.py: HF walks grapheme clusters, sentencepiece does not),
    # all but `rules`.
    spec.name = "identity"
    if rules:
        spec.name = "user_defined"
        spec.precompiled_charsmap = compile_rules(rules)
    # WhitespaceSplit + Metaspace(prepend always, split): every word starts with one ▁.
    spec.add_dummy_prefix = True
    spec.remove_extra_whitespaces = True
    spec.escape_whitespaces = True
    return proto.SerializeToString()


def bpe_proto(backend: dict) -> bytes:
    model = backend["model"]
    vocab = sorted(model["vocab"].items(), key=lambda item: item[1])
    unk_id = model["vocab"][model.get("unk_token") or "<unk>"]
    proto = _empty_proto("BPE", unk_id=unk_id)
    kinds = _piece_type()
    proto.trainer_spec.byte_fallback = True
    first_rank = merge_ranks(model["merges"])
    for piece, i in vocab:
        if i == unk_id:
            _add_piece(proto, piece, 0.0, kinds.UNKNOWN)
        elif piece in BYTE_PIECES:
            _add_piece(proto, piece, 0.0, kinds.BYTE)
        elif piece in first_rank:
            _add_piece(proto, piece, -1.0 - first_rank[piece], kinds.NORMAL)
        elif len(piece) == 1:
            _add_piece(proto, piece, UNREACHABLE_SCORE, kinds.NORMAL)
        else:
            _add_piece(proto, piece, 0.0, kinds.CONTROL)
    spec = proto.normalizer_spec
    spec.name = "identity"
    # Metaspace(prepend first, no split): ' ' -> ▁; the graph prepends the first segment's ▁.
    spec.add_dummy_prefix = False
    spec.remove_extra_whitespaces = False
    spec.escape_whitespaces = True
    return proto.SerializeToString()


def quantize(score: float) -> float:
    """`score` on a grid of SCORE_STEP. HF adds path scores in float64, exactly: two
    segmentations with the same pieces in another order tie, and the one whose last piece starts
    first wins. The op adds them in float32, where (p + a) + b and (p + b) + a round apart and
    the tie goes either way ("www" -> w + ww in HF, ww + w in the op). On the grid, float32 sums
    stay exact while a word's score stays above -2**(24 - SCORE_BITS) (-1024: about 100 pieces),
    so ties are ties and the op breaks them as HF does; the grid moves each piece's score by at
    most SCORE_STEP / 2 (3e-5)."""
    return round(score / SCORE_STEP) * SCORE_STEP


def compile_rules(rules: dict[str, str]) -> bytes:
    """A precompiled charsmap for `rules`, compiled by sentencepiece's own trainer (the only
    public builder of its double-array format) on a throwaway model."""
    import io  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import sentencepiece as spm  # noqa: PLC0415  # present wherever spm_pb is

    with tempfile.TemporaryDirectory() as folder:
        tsv = f"{folder}/rules.tsv"
        with open(tsv, "w", encoding="utf-8") as f:
            for key, value in sorted(rules.items()):
                f.write(" ".join(f"{ord(c):X}" for c in key) + "\t" + " ".join(f"{ord(c):X}" for c in value) + "\n")
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c"] * 8), model_writer=out, vocab_size=8,
                                       model_type="char", normalization_rule_tsv=tsv, hard_vocab_limit=False,
                                       minloglevel=2, num_threads=1)
    proto = _pb().ModelProto()
    proto.ParseFromString(out.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def merge_ranks(merges: list) -> dict[str, int]:
    """merged piece -> rank of the first merge that produces it."""
    first: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        first.setdefault(left + right, rank)
    return first


def merges_problem(model: dict) -> str | None:
    """Why sentencepiece's score-ordered merges would differ from HF's rank-ordered ones, or None."""
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    vocab = model["vocab"]
    listed = set(merges)
    last_piece, seen = None, set()
    for rank, (left, right) in enumerate(merges):
        piece = left + right
        if piece not in vocab:
            return f"model.merges[{rank}]: {left!r} + {right!r} makes a piece that is not in model.vocab"
        if piece != last_piece and piece in seen:
            return f"model.merges[{rank}]: the merges making {piece!r} are not in consecutive ranks"
        seen.add(piece)
        last_piece = piece
    for piece in seen:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and (left, right) not in listed:
                return f"model.merges: {left!r} + {right!r} -> {piece!r} is not a merge although all three are pieces"
    return None


def _piece_type():
    return _pb().ModelProto.SentencePiece


def _pb():
    if spm_pb is None:
        raise MissingDependency("SentencePiece-style tokenizers (Unigram, byte-fallback BPE) need "
                                "sentencepiece: pip install sentencepiece==0.2.3")
    return spm_pb


def _empty_proto(model_type: str, unk_id: int):
    proto = _pb().ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = _pb().TrainerSpec.ModelType.Value(model_type)
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = unk_id, -1, -1, -1
    return proto


def _add_piece(proto, piece: str, score: float, kind: int) -> None:
    entry = proto.pieces.add()
    entry.piece, entry.score, entry.type = piece, score, kind
