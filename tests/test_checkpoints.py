"""--model takes a local folder or a Hugging Face id already in the local cache (offline)."""

from __future__ import annotations

import pytest

from exportable.checkpoints import hub_cache_dir, resolve_checkpoint
from exportable.errors import InputError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def save_tiny_bert(folder):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertModel(config).eval()
    model.save_pretrained(folder)
    return model


def cache_repo(hf_home, repo_id: str):
    """The layout huggingface_hub writes when it downloads `repo_id` (refs/main -> snapshot)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_a_local_folder_is_itself(tmp_path):
    assert resolve_checkpoint(str(tmp_path)) == tmp_path


def test_a_cached_hub_id_resolves_to_its_snapshot_and_loads(hf_home):
    import torch
    from huggingface_hub import scan_cache_dir
    from transformers import AutoModel

    original = save_tiny_bert(cache_repo(hf_home, "acme/tiny-bert"))
    assert hub_cache_dir() == hf_home / "hub"
    # huggingface_hub itself recognises the cache the test built
    assert {r.repo_id for r in scan_cache_dir(hf_home / "hub").repos} == {"acme/tiny-bert"}
    folder = resolve_checkpoint("acme/tiny-bert")
    assert folder.name == COMMIT
    loaded = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state)


def test_an_id_missing_from_the_cache_is_one_line_with_the_fix(hf_home):
    with pytest.raises(InputError) as err:
        resolve_checkpoint("acme/not-downloaded")
    msg = str(err.value)
    assert "\n" not in msg
    assert "acme/not-downloaded" in msg and "not in the local Hugging Face cache" in msg
    assert str(hf_home / "hub") in msg and "hf download acme/not-downloaded" in msg


def test_a_path_that_is_not_an_id_says_no_such_folder(tmp_path):
    with pytest.raises(InputError, match="no such folder; pass a local model folder"):
        resolve_checkpoint(str(tmp_path / "missing" / "deeper"))


def test_a_file_is_not_a_model_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file; pass the model folder"):
        resolve_checkpoint(str(f), flag="--weights")
