"""Training throughput: tokens/s of the masked-diffusion training step (and MFU on a GPU).

    python bench/train/bench_train.py --model tiny --data /work/prepared/beauty \
        --sids /work/prepared/beauty_sids/sids.pt --threads 2 --append bench/train/results.md
    python bench/train/bench_train.py --model reference --batch-size 2048 --device cuda \
        --precision bf16 [--compile] ...

One step = noise a batch, forward, weighted loss, backward, gradient clipping and AdamW, exactly
what `MaskedDiffusionModule.training_step` runs (minus Lightning's bookkeeping). Batches are the
real training rows of a prepared dataset in the training order (StepSampler), or random rows
with Beauty-like lengths when no data is given. tokens/s counts real (non-PAD) tokens; MFU
uses the padded tokens the GPU actually computes and nanoGPT's 6N + 12·layers·width·L FLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from madrec import models
from madrec.config import Config, load_config
from madrec.data.dataset import load_dataset
from madrec.models.tokens import SIDVocab
from madrec.sids.format import load_sids
from madrec.train.module import item_tokenizer
from madrec.train.rows import StepSampler, TrainingRows, step_seed
from madrec.train.run import resolve_dropout, resolve_max_len

EXPERIMENTS = {"tiny": "tiny", "reference": "discrete_diffusion_train"}  # aliases; any experiment name works
# dense bf16 tensor-core peaks (TFLOP/s) for MFU
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def rows_for(args, cfg) -> tuple[Config, TrainingRows, torch.Tensor, SIDVocab, int, str]:
    """The config with its data rules applied, training rows, the token table, vocabulary and
    max_len of the real data (or synthetic rows)."""
    spec = models.get(cfg.model.name)
    if args.data:
        data = load_dataset(args.data, splits=("training",))
        sids = (
            load_sids(args.sids, num_items=data.num_items, codebook_size=cfg.codebook_size) if spec.uses_sids else None
        )
        num_items = data.num_items
        table = spec.sid_table(sids, num_items)
        sequences, source = data.splits["training"].sequences, f"{Path(args.data).name} training rows"
    else:
        rng = np.random.default_rng(0)
        num_items = 12_101
        table = spec.sid_table(torch.randint(0, cfg.codebook_size, (4, num_items)), num_items)
        sequences = [rng.integers(0, num_items, size=n) for n in rng.geometric(1 / 6.9, size=22_363) + 2]
        source = "synthetic rows (Beauty-like lengths)"
    vocab = spec.vocab(table, cfg.codebook_size)
    max_len = resolve_max_len(cfg, sequences, vocab.sid_len)
    cfg = resolve_dropout(cfg, sequences, num_items)
    return cfg, TrainingRows(sequences, max_len // vocab.sid_len, cfg.rows), table, vocab, max_len, source


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="experiment name (tiny, reference, small, tiger_cpu, ...)")
    p.add_argument("--override", nargs="*", default=[], help="key=value config overrides")
    p.add_argument("--batch-size", type=int, help="default: the experiment's batch_size")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("32", "bf16"), default="32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    p.add_argument("--data", help="prepared dataset folder (default: synthetic rows)")
    p.add_argument("--sids", help="SID file for --data")
    p.add_argument("--peak-tflops", type=float, help="peak FLOP/s of the device for MFU (default: known GPUs)")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    p.add_argument("--append", help="append a Markdown table row to this results file")
    p.add_argument("--profile", help="write the timed steps' top operators (torch.profiler; slows the steps) here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(
        [f"experiment={EXPERIMENTS.get(args.model, args.model)}", "data_dir=-", "sid_data_path=-", *args.override]
    )
    batch_size = args.batch_size or cfg.batch_size
    device = torch.device(args.device)
    cfg, rows, table, vocab, max_len, source = rows_for(args, cfg)
    torch.manual_seed(cfg.seed)
    model, objective = models.build(cfg, vocab, table)
    model.to(device).train()
    forward = torch.compile(model.forward) if args.compile else model.forward
    o = cfg.optim.optimizer
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=tuple(o.betas),
        fused=device.type == "cuda" or None,
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    )
    tokenizer = item_tokenizer(vocab, table)
    batches = iter(StepSampler(rows, batch_size, cfg.seed, 0, 1, start_step=lambda: 0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    real = padded = flops = 0.0
    profiler = torch.profiler.profile() if args.profile else contextlib.nullcontext()
    with contextlib.ExitStack() as timed:
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                sync()
                timed.enter_context(profiler)  # profile the timed steps only
                start = time.perf_counter()
            batch = tokenizer[rows.batch(next(batches).numpy())].flatten(1).to(device, non_blocking=True)
            torch.manual_seed(step_seed(cfg.seed, step, 0))
            with autocast:
                total, norm = objective.loss_terms(forward, batch)
            (total / norm).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup:
                real += float((batch != vocab.pad_id).sum())
                padded += batch.numel()
                flops += model.flops_per_token(batch.shape[1]) * batch.numel()
        sync()
        seconds = time.perf_counter() - start
    if args.profile:
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        Path(args.profile).write_text(f"bench_train.py {' '.join(argv or sys.argv[1:])}\n{table}\n")
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "model": args.model,
        "params": model.num_parameters(),
        "batch_size": batch_size,
        "max_len": max_len,
        "device": machine(device),
        "precision": args.precision,
        "compile": args.compile,
        "data": source,
        "steps": args.steps,
        "ms_per_step": 1000 * seconds / args.steps,
        "tokens_per_s": real / seconds,
        "padded_tokens_per_s": padded / seconds,
        "tflops": flops / seconds / 1e12,
        "mfu": (flops / seconds / 1e12) / peak if peak else None,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    if args.append:
        mfu = f"{100 * result['mfu']:.1f} %" if result["mfu"] is not None else "–"
        with open(args.append, "a") as fh:
            fh.write(
                f"| {result['date']} | {result['commit']} | {result['device']} | {args.model} "
                f"({result['params'] / 1e6:.2f}M) | {batch_size} | {args.precision}"
                f"{' + compile' if args.compile else ''} | {result['tokens_per_s']:,.0f} | "
                f"{result['padded_tokens_per_s']:,.0f} | {result['ms_per_step']:.1f} | {mfu} |\n"
            )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
