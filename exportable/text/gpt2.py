"""The real GPT-2 tokenizer without a model hub: transformers' TikTokenConverter turns GPT-2's BPE
ranks (the `gpt2.tiktoken` file that the openai-whisper sdist ships in whisper/assets/) into the
byte-level BPE tokenizer GPT-2, GPT-Neo and GPT-J use, ids identical to theirs.

    tokenizer = gpt2_tokenizer("whisper/assets/gpt2.tiktoken")
    tokenizer.save_pretrained(DIR)

The `tiktoken` package is not needed: the file is one "base64(token) rank" pair per line.
"""

from __future__ import annotations

import base64
from pathlib import Path

from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from ..errors import InputError

# GPT-2's pre-tokenizer regex (the ByteLevel pattern), and its one special token.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT, END_OF_TEXT_ID = "<|endoftext|>", 50256


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise InputError(f"{path}:{number}: not a tiktoken ranks line (base64 token, space, rank)") from None
    return ranks


class _FileConverter(TikTokenConverter):
    @staticmethod
    def load_tiktoken_bpe(path) -> dict[bytes, int]:  # the converter's hook, without `tiktoken`
        return read_ranks(path)


def gpt2_tokenizer(tiktoken_file, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    converter = _FileConverter(vocab_file=str(tiktoken_file), pattern=PATTERN,
                               extra_special_tokens={END_OF_TEXT: END_OF_TEXT_ID})
    return PreTrainedTokenizerFast(tokenizer_object=converter.converted(), bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, unk_token=END_OF_TEXT, model_max_length=model_max_length)
