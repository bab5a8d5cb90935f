"""The default TF text encoder (issue 8) and a runner for any SavedModel with a string signature.

    strings [batch] -> tensorflow-text BertTokenizer (WordPiece, lower_case) -> [CLS] ids [SEP]
    -> small Keras encoder (token + position embedding, one transformer block) -> masked mean
    pooling -> L2 normalise -> sentence_embedding [batch, dim]; input_ids [batch, sequence] too,
    so that token-id parity can be checked exactly.

The tokenizer lives inside the TF graph, as in a real TF Serving model; the weights are seeded
(numpy, not TF's RNG) so every machine builds the same model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .deps import import_tf

SIGNATURE = "serving_default"
TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "sentence_embedding"
IDS_OUTPUT = "input_ids"
DIM, HEADS, FFN = 64, 2, 128


@dataclass(frozen=True)
class SignatureInfo:
    """One SavedModel signature: {name: (dtype, shape)} per input and output (None = unknown dim)."""

    name: str
    inputs: dict
    outputs: dict

    @property
    def text_input(self) -> str:
        """The one rank-1 string input this package can convert."""
        strings = [k for k, (dtype, shape) in self.inputs.items() if dtype == "string" and len(shape) == 1]
        if len(self.inputs) != 1 or len(strings) != 1:
            raise InputError(f"signature {self.name!r} takes {self.inputs}; exportable.tf converts signatures with "
                             "exactly one input, a batch of strings (dtype string, shape [None])")
        return strings[0]


def build_default_savedmodel(out_dir, vocab_path, seed: int = 0, max_length: int = 256) -> SignatureInfo:
    """Write the default text encoder as a SavedModel at `out_dir`; returns its signature."""
    tf, _ = import_tf()
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise InputError(f"vocab file {vocab_path} not found; pass a WordPiece vocab.txt (one token per line)")
    if max_length < 2:
        raise InputError(f"max_length={max_length} leaves no room for [CLS] and [SEP]; use 2 or more")
    module = _text_encoder_class()(str(vocab_path), seed=seed, max_length=max_length)
    tf.saved_model.save(module, str(out_dir), signatures={SIGNATURE: module.serve})
    return signature_info(out_dir)


def signature_info(saved_model_dir, signature: str = SIGNATURE) -> SignatureInfo:
    fn = _signature(saved_model_dir, signature)
    _, kwargs = fn.structured_input_signature
    inputs = {k: (v.dtype.name, _dims(v.shape)) for k, v in kwargs.items()}
    outputs = {k: (v.dtype.name, _dims(v.shape)) for k, v in fn.structured_outputs.items()}
    return SignatureInfo(signature, inputs, outputs)


def run_savedmodel(saved_model_dir, texts: Sequence[str], signature: str = SIGNATURE) -> dict[str, np.ndarray]:
    """Run the TF original on a list of strings: {output name: numpy array}."""
    tf, _ = import_tf()
    info = signature_info(saved_model_dir, signature)
    fn = _signature(saved_model_dir, signature)
    # Encode explicitly: a str holding NUL or an empty list would otherwise trip tf.constant's inference.
    batch = tf.constant(np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(len(texts)),
                        dtype=tf.string)
    return {k: v.numpy() for k, v in fn(**{info.text_input: batch}).items()}


def _signature(saved_model_dir, signature: str):
    path = Path(saved_model_dir).resolve()
    if not (path / "saved_model.pb").is_file():
        raise InputError(f"{path} is not a SavedModel folder (no saved_model.pb); pass the folder "
                         "tf.saved_model.save wrote")
    # Keyed by the file's mtime too: a model rewritten in place is loaded again.
    return _load_signature(str(path), signature, (path / "saved_model.pb").stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_signature(path: str, signature: str, mtime_ns: int):
    tf, _ = import_tf()
    loaded = tf.saved_model.load(path)
    if signature not in loaded.signatures:
        raise InputError(f"SavedModel {path} has no signature {signature!r}; it has {sorted(loaded.signatures)}")
    fn = loaded.signatures[signature]
    fn._exportable_keepalive = loaded  # the concrete function does not own the restored variables
    return fn


def _dims(shape) -> list:
    return list(shape.as_list()) if shape.rank is not None else []


@functools.lru_cache(maxsize=1)
def _text_encoder_class():
    """The tf.Module subclass, defined lazily because TF is an optional import."""
    tf, tft = import_tf()
    import keras  # noqa: PLC0415  # optional extra (tf), loaded with TF

    # A Layer, not a Model: keras.Model adds its own single-input serving signature to the
    # SavedModel ("missing a required argument: 'mask'" on save).
    class TinyEncoder(keras.layers.Layer):
        """Token + position embedding, one post-norm transformer block, masked mean, L2 normalise."""

        def __init__(self, vocab_size: int, max_length: int):
            super().__init__()
            self.tokens = keras.layers.Embedding(vocab_size, DIM)
            self.positions = keras.layers.Embedding(max_length, DIM)
            self.attention = keras.layers.MultiHeadAttention(HEADS, DIM // HEADS)
            self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6)
            self.ff1 = keras.layers.Dense(FFN, activation="gelu")
            self.ff2 = keras.layers.Dense(DIM)
            self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6)

        def call(self, ids, mask):
            positions = tf.range(tf.shape(ids)[1])
            x = self.tokens(ids) + self.positions(positions)[tf.newaxis]
            pair_mask = tf.logical_and(mask[:, :, tf.newaxis], mask[:, tf.newaxis, :])
            x = self.norm1(x + self.attention(x, x, attention_mask=pair_mask))
            x = self.norm2(x + self.ff2(self.ff1(x)))
            weights = tf.cast(mask, x.dtype)[:, :, tf.newaxis]
            pooled = tf.reduce_sum(x * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1e-9)
            return tf.math.l2_normalize(pooled, axis=1)

    class TextEncoder(tf.Module):
        def __init__(self, vocab_path: str, seed: int, max_length: int):
            super().__init__()
            self.tokenizer = tft.BertTokenizer(vocab_path, lower_case=True, token_out_type=tf.int64)
            vocab = Path(vocab_path).read_text(encoding="utf-8").split("\n")
            vocab = vocab[:-1] if vocab and vocab[-1] == "" else vocab
            self.cls_id, self.sep_id, self.pad_id = (_vocab_id(vocab, t) for t in ("[CLS]", "[SEP]", "[PAD]"))
            self.max_length = max_length
            self.encoder = TinyEncoder(len(vocab), max_length)
            self.encoder(tf.zeros([1, 2], tf.int64), tf.ones([1, 2], tf.bool))  # build the weights
            _seed_weights(self.encoder, seed)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=TEXT_INPUT)])
        def serve(self, text):
            # [batch, words, pieces] -> [batch, pieces], truncated so that [CLS] + ids + [SEP] fits.
            ids = self.tokenizer.tokenize(text).merge_dims(-2, -1)[:, : self.max_length - 2]
            rows = ids.nrows()
            cls = tf.fill([rows, 1], tf.constant(self.cls_id, tf.int64))
            sep = tf.fill([rows, 1], tf.constant(self.sep_id, tf.int64))
            ids = tf.concat([cls, ids, sep], axis=1)
            dense = ids.to_tensor(default_value=self.pad_id)
            mask = tf.sequence_mask(ids.row_lengths(), tf.shape(dense)[1])
            return {EMBEDDING_OUTPUT: self.encoder(dense, mask), IDS_OUTPUT: dense}

    return TextEncoder


def _vocab_id(vocab: list[str], token: str) -> int:
    try:
        return vocab.index(token)
    except ValueError:
        raise InputError(f"the vocab has no {token} token; the default encoder needs [CLS], [SEP] and [PAD]") from None


def _seed_weights(model, seed: int) -> None:
    """Overwrite every weight from numpy's seeded generator: the same model on every platform,
    and large enough weights that a wrong token id visibly moves the embedding."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if weight.path.endswith("gamma"):
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        weight.assign(value.astype(np.float32))
