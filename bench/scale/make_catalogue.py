"""Synthetic catalogues with learnable structure for the scale benchmark (bench/scale, issue #33).

    python bench/scale/make_catalogue.py --items 100000 --out /tmp/cat100k [--users N] [--seed 0]

Writes into OUT:

- `sids.pt`: int64 tensor (4, N), 3 levels x 256 codes + the de-duplication digit (items sharing
  a 3-digit prefix numbered 0..n-1 by item index), column = item index: `madrec ingest-sids`'s format;
- `sequences.txt`: one line per user, `user item item ...`, ~12 items on average (3 + Poisson(9));
- `items.jsonl`: `{"item_id": i, "text": ...}` for every item;
- `catalogue.json`: the parameters and counts.

Item ids are 0..N-1 and, with users >= N, user u starts at item start[u mod N] (a permutation), so
every item occurs: `madrec prepare-data --dataset sequences --source OUT/sequences.txt --items
OUT/items.jsonl --min-item-count 1` keeps all N items, indexes them in id order, and column i of
sids.pt is item index i. Popularity is Zipf-like (weight 1/rank^zipf over a random ranking). Each
next item is drawn, by popularity, from the previous item's 2-digit SID prefix group (p_l2; groups
of one item fall back to the 1-digit group), its 1-digit group (p_l1), or the whole catalogue (the
rest): users walk mostly inside a SID cluster, with jumps. Users are generated and written in chunks,
vectorised over users (a loop over positions, never over interactions), from seeds (seed, chunk), so
the output is deterministic and memory stays ~100 bytes per item plus one chunk.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

LEVELS, CODEBOOK = 3, 256
MEAN_LEN, MIN_LEN = 12.0, 3  # items per user: MIN_LEN + Poisson(MEAN_LEN - MIN_LEN)


@dataclass
class Params:
    """What a catalogue is generated from (all of it lands in catalogue.json)."""

    items: int
    users: int
    seed: int = 0
    zipf: float = 1.0
    p_l2: float = 0.35
    p_l1: float = 0.45
    cluster_skew: float = 2.0  # Dirichlet concentration of first-digit cluster sizes (lower: more uneven)
    chunk_users: int = 200_000


# --- the catalogue: SIDs, popularity and the SID-sorted view walks sample from --------------


def make_sids(n: int, rng: np.random.Generator, cluster_skew: float) -> np.ndarray:
    """(4, n) int64: first digit from uneven cluster sizes, two uniform digits, the de-dup digit."""
    codes = np.empty((LEVELS + 1, n), dtype=np.int64)
    codes[0] = rng.choice(CODEBOOK, size=n, p=rng.dirichlet(np.full(CODEBOOK, cluster_skew)))
    codes[1:LEVELS] = rng.integers(0, CODEBOOK, size=(LEVELS - 1, n))
    key = prefix_key(codes, LEVELS)
    order = np.argsort(key, kind="stable")  # ties keep item order: de-dup digit numbers by item index
    sorted_key = key[order]
    first = np.searchsorted(sorted_key, sorted_key, side="left")
    codes[LEVELS, order] = np.arange(n) - first
    if codes[LEVELS].max() >= CODEBOOK:
        raise ValueError(f"a SID prefix is shared by more than {CODEBOOK} items; use fewer items or levels")
    return codes


def prefix_key(codes: np.ndarray, depth: int) -> np.ndarray:
    """The first `depth` digits of each column as one int64."""
    key = np.zeros(codes.shape[1], dtype=np.int64)
    for level in range(depth):
        key = key * CODEBOOK + codes[level]
    return key


class Catalogue:
    """Items sorted by SID prefix with their cumulative popularity: a prefix group is one range."""

    def __init__(self, params: Params):
        rng = np.random.default_rng([params.seed, 0])
        n = params.items
        self.sids = make_sids(n, rng, params.cluster_skew)
        weight = np.empty(n)
        weight[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** params.zipf
        self.start = rng.permutation(n)  # user u's first item: start[u mod n]
        self.key1, self.key2 = self.sids[0], prefix_key(self.sids, 2)
        self.order = np.argsort(prefix_key(self.sids, LEVELS), kind="stable")
        self.rank = np.empty(n, dtype=np.int64)
        self.rank[self.order] = np.arange(n)  # item -> its position in the sorted order
        self.cum = np.concatenate([[0.0], np.cumsum(weight[self.order])])
        self.bounds1 = np.searchsorted(self.key1[self.order], np.arange(CODEBOOK + 1))
        self.bounds2 = np.searchsorted(self.key2[self.order], np.arange(CODEBOOK**2 + 1))

    def draw(self, lo: np.ndarray, hi: np.ndarray, u: np.ndarray, skip: np.ndarray) -> np.ndarray:
        """Items by popularity from the sorted ranges [lo, hi), one per uniform u, never the item
        at sorted position `skip` (its weight is cut out of the range, so nothing repeats)."""
        w_skip = self.cum[skip + 1] - self.cum[skip]
        x = self.cum[lo] + u * (self.cum[hi] - self.cum[lo] - w_skip)
        x = np.where(x >= self.cum[skip], x + w_skip, x)
        pos = np.clip(np.searchsorted(self.cum, x, side="right") - 1, lo, hi - 1)
        return self.order[pos]

    def step(self, prev: np.ndarray, rng: np.random.Generator, p_l2: float, p_l1: float) -> np.ndarray:
        """Next items after `prev`: inside its 2-digit group, its 1-digit group, or anywhere
        (a group holding only `prev` passes the draw on to the wider one)."""
        k1, k2 = self.key1[prev], self.key2[prev]
        lo1, hi1 = self.bounds1[k1], self.bounds1[k1 + 1]
        lo2, hi2 = self.bounds2[k2], self.bounds2[k2 + 1]
        mode = rng.random(len(prev))
        in_l2 = (mode < p_l2) & (hi2 - lo2 >= 2)
        in_l1 = (mode < p_l2 + p_l1) & ~in_l2 & (hi1 - lo1 >= 2)
        lo = np.where(in_l2, lo2, np.where(in_l1, lo1, 0))
        hi = np.where(in_l2, hi2, np.where(in_l1, hi1, len(self.order)))
        return self.draw(lo, hi, rng.random(len(prev)), self.rank[prev])


def walk_chunk(cat: Catalogue, params: Params, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users of one chunk: (user ids, lengths, (users, max length) item matrix padded with -1)."""
    rng = np.random.default_rng([params.seed, 1, chunk])
    users = np.arange(chunk * params.chunk_users, min((chunk + 1) * params.chunk_users, params.users))
    lengths = MIN_LEN + rng.poisson(MEAN_LEN - MIN_LEN, size=len(users))
    seqs = np.full((len(users), int(lengths.max())), -1, dtype=np.int64)
    seqs[:, 0] = cat.start[users % params.items]
    for t in range(1, seqs.shape[1]):
        live = np.flatnonzero(lengths > t)
        seqs[live, t] = cat.step(seqs[live, t - 1], rng, params.p_l2, params.p_l1)
    return users, lengths, seqs


# --- writing text without a Python loop per number -------------------------------------------


def digit_counts(values: np.ndarray) -> np.ndarray:
    """Decimal digits of each non-negative int64."""
    n = np.ones(len(values), dtype=np.int64)
    for power in range(1, 19):
        n += values >= 10**power
    return n


def put_digits(buf: np.ndarray, end: np.ndarray, values: np.ndarray, ndigits: np.ndarray) -> None:
    """Write each value's decimal digits into buf so that the last digit sits at end - 1."""
    v = values.copy()
    for d in range(int(ndigits.max(initial=1))):
        live = ndigits > d
        buf[end[live] - 1 - d] = 48 + v[live] % 10
        v //= 10


def sequence_lines(users: np.ndarray, lengths: np.ndarray, seqs: np.ndarray) -> bytes:
    """`user item item ...\\n` for every user of a chunk, as bytes."""
    table = np.concatenate([users[:, None], seqs], axis=1)
    cols = np.arange(table.shape[1])
    keep = cols[None, :] <= lengths[:, None]  # the user id and its `length` items
    tokens = table[keep]
    last = (cols[None, :] == lengths[:, None])[keep]
    width = digit_counts(tokens)
    end = np.cumsum(width + 1)  # each token plus its separator
    buf = np.empty(int(end[-1]), dtype=np.uint8)
    buf[end - 1] = np.where(last, ord("\n"), ord(" "))
    put_digits(buf, end - 1, tokens, width)
    return buf.tobytes()


def render_rows(pieces: list, n: int) -> bytes:
    """n rows, each the concatenation of `pieces`: constant bytes or an int64 column of length n."""
    widths = [np.full(n, len(p)) if isinstance(p, bytes) else digit_counts(p) for p in pieces]
    row_len = np.sum(widths, axis=0)
    offset = np.cumsum(row_len) - row_len
    buf = np.empty(int(row_len.sum()), dtype=np.uint8)
    for piece, width in zip(pieces, widths):
        if isinstance(piece, bytes):
            for j, byte in enumerate(piece):
                buf[offset + j] = byte
        else:
            put_digits(buf, offset + width, piece, width)
        offset = offset + width
    return buf.tobytes()


def write_items(path: Path, sids: np.ndarray, chunk: int) -> None:
    """items.jsonl: each item's text names its synthetic topic (the first two SID digits)."""
    with path.open("wb") as fh:
        for a in range(0, sids.shape[1], chunk):
            ids = np.arange(a, min(a + chunk, sids.shape[1]))
            c1, c2 = sids[0, ids], sids[1, ids]
            pieces = [b'{"item_id": ', ids, b', "text": "item ', ids, b" topic ", c1, b" subtopic ", c2, b'"}\n']
            fh.write(render_rows(pieces, len(ids)))


# --- the whole catalogue ----------------------------------------------------------------------


def make_catalogue(out: str | Path, items: int, users: int | None = None, **options) -> dict:
    """Generate a catalogue into `out`; returns the content of out/catalogue.json."""
    import torch

    start = time.perf_counter()
    params = Params(items=items, users=users or items, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cat = Catalogue(params)
    torch.save(torch.from_numpy(cat.sids), out / "sids.pt")
    write_items(out / "items.jsonl", cat.sids, params.chunk_users)
    interactions, longest = 0, 0
    with (out / "sequences.txt").open("wb") as fh:
        for chunk in range(-(-params.users // params.chunk_users)):
            users_c, lengths, seqs = walk_chunk(cat, params, chunk)
            fh.write(sequence_lines(users_c, lengths, seqs))
            interactions, longest = interactions + int(lengths.sum()), max(longest, int(lengths.max()))
    info = {
        "params": asdict(params),
        "num_items": items,
        "num_users": params.users,
        "num_interactions": interactions,
        "longest_sequence": longest,
        "every_item_occurs": params.users >= items,
        "files": {"sids": "sids.pt", "sequences": "sequences.txt", "items": "items.jsonl"},
        "prepare": "madrec prepare-data --dataset sequences --source sequences.txt --items items.jsonl "
        "--min-item-count 1",
        "seconds": round(time.perf_counter() - start, 3),
    }
    (out / "catalogue.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--users", type=int, default=None, help="default: as many as items (then every item occurs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zipf", type=float, default=Params.zipf, help="popularity exponent")
    p.add_argument("--p-l2", type=float, default=Params.p_l2, help="share of steps inside the 2-digit group")
    p.add_argument("--p-l1", type=float, default=Params.p_l1, help="share of steps inside the 1-digit group")
    p.add_argument("--chunk-users", type=int, default=Params.chunk_users)
    a = p.parse_args(argv)
    info = make_catalogue(
        a.out, a.items, a.users, seed=a.seed, zipf=a.zipf, p_l2=a.p_l2, p_l1=a.p_l1, chunk_users=a.chunk_users
    )
    print(json.dumps({k: v for k, v in info.items() if k != "files"}))
    return info


if __name__ == "__main__":
    main()
