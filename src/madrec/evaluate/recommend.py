"""Recommending the next items for histories of ORIGINAL item ids, from a checkpoint.

rec = Recommender.from_checkpoint("runs/tiny/checkpoints/best.ckpt")
rec.recommend(["B00123", "B00456"], k=10)       # [("B00789", -1.23), ...] best first
rec.recommend_many([[...], [...]], k=10)        # one list per history, decoded in batches

madrec recommend --ckpt runs/tiny/checkpoints/best.ckpt --history B00123,B00456 -k 10
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np
import torch

from madrec.dist import DEVICE_CHOICES, resolve_device
from madrec.errors import MadrecError, quoted
from madrec.evaluate.decode import SIDIndex, beam_search, build_histories, history_window, max_next_items
from madrec.evaluate.run import default_batch_size
from madrec.models.tokens import SIDVocab

log = logging.getLogger(__name__)


class Recommender:
    """Constrained beam decoding (madrec.evaluate.decode) behind an id-in, id-out interface."""

    def __init__(
        self,
        model: torch.nn.Module,
        vocab: SIDVocab,
        sids: torch.Tensor,
        item_ids: Sequence[str],
        max_len: int,
        *,
        device: str | torch.device = "cpu",
        order: str = "confidence",
        reveal_per_step: int = 1,
    ):
        if len(item_ids) != sids.shape[1]:
            raise MadrecError(f"{len(item_ids)} item ids for a SID table of {sids.shape[1]} items")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab, self.max_len = vocab, max_len
        self.sids = sids.to(self.device)
        self.item_ids = [str(i) for i in item_ids]
        self.index_of = {item: i for i, item in enumerate(self.item_ids)}
        self.order, self.reveal_per_step = order, reveal_per_step
        self.sid_index = SIDIndex(self.sids, vocab.codebook_size)
        self.max_next_items = max_next_items(self.model, max_len, vocab.sid_len)
        self._said_cut = False

    def window(self, next_items: int = 1) -> int:
        """How many of a history's most recent items the model reads (older ones are left out)."""
        return history_window(self.max_len, self.vocab.sid_len, next_items)

    @classmethod
    def from_checkpoint(cls, path: str, *, device: str | None = None, **kwargs) -> Recommender:
        """Load a checkpoint written by `madrec train` (local, http(s) or gs://); device: auto."""
        from madrec.checkpoint import load_checkpoint

        device = resolve_device(device)
        loaded = load_checkpoint(path, map_location=device)
        return cls(loaded.model, loaded.vocab, loaded.sids, loaded.item_ids, loaded.max_len, device=device, **kwargs)

    def _indices(self, history: Sequence, skip_unknown: bool, which: int) -> np.ndarray:
        """Catalogue indices of one history; refuses unknown ids (unless skipped) and an empty result."""
        out, unknown = [], []
        for item in history:
            i = self.index_of.get(str(item))
            if i is None:
                unknown.append(str(item))
            else:
                out.append(i)
        if unknown and not skip_unknown:
            shown = ", ".join(quoted(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise MadrecError(
                f"history {which}: {len(unknown)} item id(s) not in the model's catalogue of {len(self.item_ids)} "
                f"items: {shown}; pass skip_unknown=True (--skip-unknown) to ignore them"
            )
        if not out:
            skipped = f" after skipping its {len(unknown)} unknown id(s)" if unknown else ""
            raise MadrecError(
                f"history {which} is empty{skipped}: the model recommends from a user's items, give at least "
                "one id from the checkpoint's catalogue"
            )
        return np.asarray(out, dtype=np.int64)

    def recommend_many(
        self,
        histories: Sequence[Sequence],
        k: int = 10,
        *,
        beam_size: int | None = None,
        skip_unknown: bool = False,
        next_items: int = 1,
        batch_size: int | None = None,
    ) -> list[list]:
        """Top-k (item id, score) lists, best first, for each history (oldest item first).

        Scores are summed log-probabilities of the item's SID. The beam is `max(k, 10)` wide
        unless `beam_size` is given. With `next_items=n > 1` the next n items are decoded
        jointly and each entry is (tuple of n item ids, score). `batch_size`: histories decoded
        together (default: 256 on GPU, 16 on CPU).

        A list never repeats an item; it holds FEWER than k entries when fewer than k items can
        be decoded (a catalogue smaller than k), rather than padding with placeholder items.
        """
        beam = beam_size or max(k, 10)
        batch_size = batch_size or default_batch_size(self.device)
        seqs = [self._indices(h, skip_unknown, i) for i, h in enumerate(histories)]
        if next_items > self.max_next_items:
            raise MadrecError(
                f"next_items={next_items}: this checkpoint decodes at most {self.max_next_items} item(s) at once "
                f"({type(self.model).__name__}, max_len {self.max_len}); ask for fewer"
            )
        self._say_cut(seqs, next_items)
        out: list[list] = []
        for lo in range(0, len(seqs), batch_size):
            hist = build_histories(
                self.vocab, self.sids, seqs[lo : lo + batch_size], self.max_len, drop_last=False, next_items=next_items
            )
            res = beam_search(
                self.model,
                self.vocab,
                self.sids,
                hist.to(self.device),
                beam_size=beam,
                top_k=k,
                order=self.order,
                reveal_per_step=self.reveal_per_step,
                next_items=next_items,
                index=self.sid_index,
            )
            items = res.items.reshape(res.items.shape[0], k, next_items).tolist()
            for row, scores in zip(items, res.scores.tolist()):
                ranked = [(tuple(self.item_ids[i] for i in t), s) for t, s in zip(row, scores) if min(t) >= 0]
                out.append([(t[0], s) for t, s in ranked] if next_items == 1 else ranked)
        return out

    def _say_cut(self, seqs: list[np.ndarray], next_items: int) -> None:
        """Log once that histories longer than the model's window lose their oldest items."""
        window = self.window(next_items)
        cut = sum(len(s) > window for s in seqs)
        if cut and not self._said_cut:
            self._said_cut = True
            log.warning(
                "%d history(ies) longer than the model's window of %d items: only the most recent %d are read "
                "(max_len %d tokens at %d per item); said once",
                cut,
                window,
                window,
                self.max_len,
                self.vocab.sid_len,
            )

    def recommend(self, history: Sequence, k: int = 10, **kwargs) -> list[tuple[str, float]]:
        """Top-k (item id, score), best first, for one history of original item ids."""
        return self.recommend_many([history], k, **kwargs)[0]


def cli(argv: list[str]) -> int:
    """`madrec recommend --ckpt PATH --history ID,ID,... [-k 10]`: prints a ranked table."""
    p = argparse.ArgumentParser(prog="madrec recommend", description=cli.__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint written by `madrec train` (local, http(s), gs://)")
    p.add_argument("--history", required=True, help="comma-separated original item ids, oldest first")
    p.add_argument("-k", type=int, default=10, help="how many items to recommend (default 10)")
    p.add_argument("--beam-size", type=int, default=None, help="beam width (default max(k, 10))")
    p.add_argument("--skip-unknown", action="store_true", help="ignore history ids the model does not know")
    p.add_argument("--next-items", type=int, default=1, help="decode the next n items jointly (default 1)")
    p.add_argument("--device", default=None, help=f"{DEVICE_CHOICES} (default auto: cuda when available)")
    args = p.parse_args(argv)
    if args.k < 1:
        raise MadrecError(f"-k must be >= 1, got {args.k}")
    history = [h.strip() for h in args.history.split(",") if h.strip()]
    if not history:
        raise MadrecError(
            "--history is empty; give the user's item ids, comma-separated, oldest first (--history 12,7,301)"
        )
    rec = Recommender.from_checkpoint(args.ckpt, device=args.device)
    top = rec.recommend(
        history, args.k, beam_size=args.beam_size, skip_unknown=args.skip_unknown, next_items=args.next_items
    )
    top = [(i if isinstance(i, str) else " -> ".join(i), s) for i, s in top]
    width = max([len("item_id")] + [len(i) for i, _ in top])
    print(f"{'rank':>4}  {'item_id':<{width}}  {'score':>9}")
    for rank, (item, score) in enumerate(top, 1):
        print(f"{rank:>4}  {item:<{width}}  {score:>9.4f}")
    return 0
