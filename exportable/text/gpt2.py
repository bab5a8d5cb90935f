"""The real GPT-2 tokenizer without a model hub: transformers' TikTokenConverter turns GPT-2's BPE
ranks (the `gpt2.tiktoken` file that the openai-whisper sdist ships in whisper/assets/) into the
byte-level BPE tokenizer GPT-2, GPT-Neo and GPT-J use, ids identical to theirs.

    tokenizer = gpt2_tokenizer("whisper/assets/gpt2.tiktoken")
    tokenizer.save_pretrained(DIR)

The `tiktoken` package is not needed: the file is one "base64(token) rank" pair per line.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tarfile
import tempfile
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


WHISPER_SDIST = "openai-whisper==20250625"  # its sdist ships whisper/assets/gpt2.tiktoken
RANKS_ENV = "EXPORTABLE_GPT2_TIKTOKEN"  # a gpt2.tiktoken file to use instead of fetching the sdist


def gpt2_ranks_file(cache: Path) -> Path:
    """GPT-2's rank file: $EXPORTABLE_GPT2_TIKTOKEN, else cache/gpt2.tiktoken, fetched once from
    PyPI (`pip download --no-deps openai-whisper==20250625`, no model hub) into `cache`."""
    given = os.environ.get(RANKS_ENV)
    if given:
        if not Path(given).is_file():
            raise InputError(f"${RANKS_ENV}={given}: no such file; point it at a gpt2.tiktoken file")
        return Path(given)
    target = Path(cache) / "gpt2.tiktoken"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                               "-d", tmp, WHISPER_SDIST], capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob("openai_whisper-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise InputError(f"GPT-2's BPE ranks: `pip download --no-deps {WHISPER_SDIST}` failed "
                             f"({(done.stderr or done.stdout).strip().splitlines()[-1:] or ['no output']}); "
                             f"set ${RANKS_ENV} to a gpt2.tiktoken file, or pass --model DIR")
        with tarfile.open(sdists[0]) as sdist:
            member = next((m for m in sdist.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
            if member is None:
                raise InputError(f"{sdists[0].name} holds no whisper/assets/gpt2.tiktoken; set ${RANKS_ENV}")
            partial = Path(tmp) / "gpt2.tiktoken"
            partial.write_bytes(sdist.extractfile(member).read())
            os.replace(partial, target)  # whole or absent: a crash never leaves half a file
    return target
