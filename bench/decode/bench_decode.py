"""Benchmark: decoding throughput (users/s), latency and Recall@10 of madrec's beam search
against a straightforward reference decoder, same model, same users, same beam width.

The reference is the way the prior system decodes: histories padded to max_len, a Python
loop over beams (each beam one model call on all users of the batch), the full output
layer, one SID position per step (most confident first), no catalogue constraint (SIDs that
are no item count as misses). madrec: one model call per step on all beams of all users,
only the slot's logits, histories padded to the batch's longest, the catalogue constraint,
and optionally several positions per call (reveal_per_step).

    .venv/bin/python bench/decode/bench_decode.py --ckpt RUN/checkpoints/best.ckpt \
        --data /work/prepared/beauty --users 1000 --threads 1 --append bench/decode/results.md
    # GPU, whole Beauty test split (see gpu.sh):
    python bench/decode/bench_decode.py --ckpt ... --data ... --device cuda --users 0 --reference-users 2000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from madrec.checkpoint import load_checkpoint
from madrec.data.dataset import Split, load_dataset
from madrec.evaluate.decode import SIDIndex, beam_search, build_histories
from madrec.evaluate.run import predict_split, summarize

REPO = Path(__file__).resolve().parents[2]


@torch.no_grad()
def reference_decode(model, vocab, sids, histories: torch.Tensor, beam: int) -> torch.Tensor:
    """(B, beam) item indices (-1 = not an item): loop over beams, one position per step."""
    H, V = vocab.sid_len, vocab.codebook_size
    B, device = histories.shape[0], histories.device
    digit_tokens = torch.arange(H, device=device)[:, None] * (V + 1) + torch.arange(V, device=device)
    beams = [(torch.full((B, H), vocab.mask_id, device=device), torch.zeros(B, device=device))]
    for _ in range(H):
        expansions = []
        for slot, score in beams:  # one model call per beam
            logits = model(torch.cat([histories, slot], 1))[:, -H:]  # full (B, L, vocab) output
            lp = torch.log_softmax(logits.gather(2, digit_tokens.expand(B, H, V)).float(), -1)
            conf = lp.amax(-1).masked_fill(slot != vocab.mask_id, float("-inf"))
            pos = conf.argmax(1)
            expansions.append((slot, pos, score[:, None] + lp[torch.arange(B), pos]))
        cand = torch.cat([e[2] for e in expansions], 1)  # (B, beams * V)
        top = cand.topk(min(beam, cand.shape[1]), dim=1)
        slots = torch.stack([e[0] for e in expansions], 1)  # (B, beams, H)
        positions = torch.stack([e[1] for e in expansions], 1)  # (B, beams)
        rows = torch.arange(B, device=device)
        new = []
        for j in range(top.indices.shape[1]):
            which, digit = top.indices[:, j] // V, top.indices[:, j] % V
            slot, pos = slots[rows, which].clone(), positions[rows, which]
            slot[rows, pos] = pos * (V + 1) + digit
            new.append((slot, top.values[:, j]))
        beams = new
    by_sid = {tuple(d): i for i, d in enumerate(sids.t().tolist())}
    out = torch.full((B, beam), -1, dtype=torch.long)
    for j, (slot, _) in enumerate(beams):
        digits = vocab.tokens_to_digits(slot).tolist()
        out[:, j] = torch.tensor([by_sid.get(tuple(d), -1) for d in digits])
    return out


def _autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA, as madrec's evaluation uses (amp=True)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()


def run_reference(
    model, vocab, sids, split: Split, max_len: int, beam: int, batch_size: int, device, amp: bool
) -> dict:
    targets = torch.tensor([int(s[-1]) for s in split.sequences])
    items = []
    start = time.perf_counter()
    for lo in range(0, len(split), batch_size):
        seqs = split.sequences[lo : lo + batch_size]
        hist = build_histories(vocab, sids, seqs, max_len)
        pad = max_len - vocab.sid_len - hist.shape[1]  # the prior system pads every history to max_len
        hist = torch.nn.functional.pad(hist, (pad, 0), value=vocab.pad_id).to(device)
        with _autocast(device, amp):
            items.append(reference_decode(model, vocab, sids, hist, beam))
    seconds = time.perf_counter() - start
    ranked = torch.cat(items)
    hit = (ranked[:, :10] == targets[:, None]).any(1).double()
    return {
        "users_per_s": len(split) / seconds,
        "recall@10": float(hit.mean()),
        "invalid_sid_rate": float((ranked < 0).double().mean()),
        "seconds": seconds,
    }


def run_madrec(model, vocab, sids, split: Split, max_len: int, args, device, k: int, index, batch_size: int) -> dict:
    settings = dict(top_k=10, beam_size=args.beam, device=device, progress=False, index=index, amp=args.amp)
    preds = predict_split(model, vocab, sids, split, max_len, **settings, batch_size=batch_size, reveal_per_step=k)
    m = summarize(preds, (10,))
    return {
        "users_per_s": m["users_per_s"],
        "recall@10": m["recall@10"],
        "invalid_sid_rate": m["invalid_sid_rate"],
        "seconds": preds.seconds,
    }


def latency_ms(
    model, vocab, sids, index, split: Split, max_len: int, beam: int, device, amp: bool, n: int = 50
) -> dict:
    """Per-request latency: one user at a time (batch 1, best of 3 tries), median and p90 over n users."""
    times = []
    for seq in split.sequences[:n]:
        hist = build_histories(vocab, sids, [seq], max_len).to(device)
        tries = []
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with _autocast(device, amp):
                beam_search(model, vocab, sids, hist, beam_size=beam, top_k=10, index=index)
            if device.type == "cuda":
                torch.cuda.synchronize()
            tries.append(1000 * (time.perf_counter() - start))
        times.append(min(tries))
    return {"latency_ms_p50": statistics.median(times), "latency_ms_p90": float(np.percentile(times, 90))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="testing")
    p.add_argument("--users", type=int, default=1000, help="first N users of the split; 0 = all")
    p.add_argument("--reference-users", type=int, default=None, help="users for the reference (default --users)")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--batch-sizes", default="16,64,256", help="users per batch to try, each decoder gets its best")
    p.add_argument("--reveal", default="1,2,4", help="reveal_per_step values to time for madrec")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best round counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA (both decoders)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--append", default=None, help="append a Markdown section to this results file")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loaded = load_checkpoint(args.ckpt, map_location=device)
    model, vocab, max_len = loaded.model, loaded.vocab, loaded.max_len
    sids = loaded.sids.to(device)
    full = load_dataset(args.data, splits=(args.split,)).splits[args.split]
    n = args.users or len(full)
    split = Split(full.name, full.user_ids[:n], full.sequences[:n])
    n_ref = args.reference_users if args.reference_users is not None else n
    ref_split = Split(full.name, full.user_ids[:n_ref], full.sequences[:n_ref])
    index = SIDIndex(sids, vocab.codebook_size)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    warm_up = dict(top_k=10, beam_size=args.beam, device=device, progress=False, index=index)
    predict_split(model, vocab, sids, split.first(32), max_len, **warm_up)

    # every decoder at every batch size, in interleaved rounds; a decoder's row is its best batch
    # size's best round (other jobs on a shared machine only ever slow a run down)
    jobs = []
    for bs in batch_sizes:
        if n_ref:
            jobs.append(
                (
                    "reference (beam loop, unconstrained, 1 position/call)",
                    n_ref,
                    vocab.sid_len,
                    bs,
                    lambda bs=bs: run_reference(
                        model, vocab, sids, ref_split, max_len, args.beam, bs, device, args.amp
                    ),
                )
            )
        for k in [int(x) for x in args.reveal.split(",")]:
            for users, sp in ((n, split),) + (((n_ref, ref_split),) if n_ref and n_ref != n else ()):
                jobs.append(
                    (
                        f"madrec (constrained, reveal {k}/call)",
                        users,
                        -(-vocab.sid_len // k),
                        bs,
                        lambda sp=sp, k=k, bs=bs: run_madrec(
                            model, vocab, sids, sp, max_len, args, device, k, index, bs
                        ),
                    )
                )
    runs: list[list[dict]] = [[] for _ in jobs]
    for _ in range(args.repeats):
        for i, job in enumerate(jobs):
            runs[i].append(job[-1]())
    best: dict[tuple, dict] = {}
    for (name, users, calls, bs, _), results in zip(jobs, runs):
        top = max(results, key=lambda r: r["users_per_s"])
        row = {
            "decoder": name,
            "users": users,
            "model calls": calls,
            "batch_size": bs,
            **top,
            "users_per_s_median": statistics.median(r["users_per_s"] for r in results),
        }
        if (name, users) not in best or row["users_per_s"] > best[(name, users)]["users_per_s"]:
            best[(name, users)] = row
    rows = list(best.values())
    ref = rows[0] if n_ref else None
    lat = latency_ms(model, vocab, sids, index, split, max_len, args.beam, device, args.amp)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    machine = f"{platform.machine()}, {gpu or f'{args.threads} CPU threads'}, torch {torch.__version__}"
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": machine,
        "checkpoint": args.ckpt,
        "data": args.data,
        "split": args.split,
        "beam": args.beam,
        "batch_sizes": batch_sizes,
        "amp": args.amp,
        "rows": rows,
        **lat,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.append:
        lines = [
            f"### decode throughput — {result['date']} — commit {commit}",
            f"machine: {machine}; checkpoint `{args.ckpt}`; {args.data} {args.split}; beam {args.beam}, "
            f"users/s = best of {args.repeats} interleaved rounds (median) at the decoder's best batch size "
            f"among {batch_sizes} users",
            "",
            "| decoder | users | model calls | batch | users/s | Recall@10 | invalid SIDs | x reference |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            ratio = f"{r['users_per_s'] / ref['users_per_s']:.1f}x" if ref and r["users"] == n_ref else ""
            lines.append(
                f"| {r['decoder']} | {r['users']} | {r['model calls']} | {r['batch_size']} | "
                f"{r['users_per_s']:.1f} "
                f"({r['users_per_s_median']:.1f}) | "
                f"{r['recall@10']:.4f} | {r['invalid_sid_rate']:.4f} | {ratio} |"
            )
        lines += [
            "",
            f"single-user latency (batch 1, beam {args.beam}): p50 {lat['latency_ms_p50']:.1f} ms, "
            f"p90 {lat['latency_ms_p90']:.1f} ms",
            "",
        ]
        with open(args.append, "a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
