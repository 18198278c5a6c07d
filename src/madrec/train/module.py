"""The LightningModule that trains any `madrec.models` recommender on item rows and
validates / tests it by decoding whole splits (madrec.evaluate.run).

Each optimiser step re-seeds the RNG from (seed, step, rank) and normalises the loss over the
whole global batch, so a resumed run continues exactly and any number of processes computes
the same objective (madrec.train.run runs it).
"""

from __future__ import annotations

import functools
import time

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from madrec import models
from madrec.checkpoint import payload
from madrec.config import Config
from madrec.data.dataset import Split
from madrec.evaluate.run import default_batch_size, evaluate_split
from madrec.models.tokens import SIDVocab
from madrec.train.optim import LazyAdamW, clip_grad_norm
from madrec.train.rows import step_seed


def item_tokenizer(vocab: SIDVocab, sids: torch.Tensor) -> torch.Tensor:
    """(N + 1, H) token table: row i holds item i's SID tokens, the last row (PAD_ITEM) PADs."""
    return torch.cat([vocab.item_tokens(sids), torch.full((1, vocab.sid_len), vocab.pad_id)])


def lr_factor(step: int, warmup: int, max_steps: float, min_ratio: float, progress: float | None = None) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to `min_ratio` at `max_steps`.

    With `progress` (the share of a time budget spent, trainer.max_minutes) the decay follows
    it instead of the step count: 1 - progress of the way from 1 to min_ratio.
    """
    if step < warmup:
        return (step + 1) / warmup
    if progress is not None:
        remaining = max(0.0, 1.0 - progress)
    else:
        remaining = max(0, max_steps - step) / max(1, max_steps - warmup)
    return min_ratio + (1.0 - min_ratio) * remaining


class RecommenderModule(L.LightningModule):
    """Training of any madrec.models recommender on item rows; validation/test by decoding."""

    def __init__(
        self,
        cfg: Config,
        vocab: SIDVocab,
        sids: torch.Tensor,
        item_ids: list[str],
        max_len: int,
        splits: dict[str, Split],
    ):
        super().__init__()
        self.cfg, self.vocab, self.item_ids, self.max_len = cfg, vocab, item_ids, max_len
        self.register_buffer("sids", sids.long(), persistent=False)
        self.register_buffer("tokenizer", item_tokenizer(vocab, sids.long()), persistent=False)
        self.splits = splits  # "val" and, when there is a testing split, "test"
        self.results: dict[str, float] = {}  # the latest evaluation, unrounded (self.log keeps float32)
        self.model, self.objective = models.build(cfg, vocab, self.sids)
        # a function, not a registered submodule: the state dict keeps the plain `model.` keys
        self.train_forward = torch.compile(self.model.forward) if cfg.trainer.compile else self.model.forward
        self._tokens_since, self._time_since = 0.0, None
        self.train_seconds = 0.0  # training wall time so far (validation excluded): trainer.max_minutes
        self.tokens_seen = 0.0  # real (non-PAD) tokens of all training batches so far, every process

    # training
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(step_seed(self.cfg.seed, self.global_step, self.global_rank))
        tokens = self.tokenizer[batch].flatten(1)  # item rows (PAD_ITEM = -1 -> PAD tokens)
        total = norm = 0.0
        for chunk in self._length_buckets(tokens):
            chunk_total, chunk_norm = self.objective.loss_terms(self.train_forward, chunk)
            total, norm = total + chunk_total, norm + chunk_norm
        local = torch.stack([total.detach(), norm.detach(), (tokens != self.vocab.pad_id).sum().to(norm.dtype)])
        glob = self.trainer.strategy.reduce(local.clone(), reduce_op="sum") if self.trainer.world_size > 1 else local
        # DDP averages gradients over ranks: scale so the result is the global batch's gradient
        loss = total * self.trainer.world_size / glob[1].clamp_min(torch.finfo(glob.dtype).tiny)
        self._log_step(glob)
        return loss

    def _length_buckets(self, tokens: torch.Tensor):
        """The batch's rows by length in `trainer.length_buckets` groups, each trimmed to its
        longest row: the same loss sums (the objective normalises over the whole batch) for
        far fewer PAD positions when row lengths vary."""
        lengths = (tokens != self.vocab.pad_id).sum(1)
        order = torch.argsort(lengths, stable=True)
        for part in order.tensor_split(min(self.cfg.trainer.length_buckets, len(order))):
            width = max(int(lengths[part].max()), 1)
            yield tokens[part, -width:]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._time_since is None:
            self._time_since = now
        self._step_started = now

    def _log_step(self, glob: torch.Tensor) -> None:
        now = time.perf_counter()
        self._tokens_since += float(glob[2])
        self.tokens_seen += float(glob[2])
        self.log("train/loss", glob[0] / glob[1].clamp_min(torch.finfo(glob.dtype).tiny), prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        every = self.cfg.trainer.log_every_n_steps
        if (self.global_step + 1) % every == 0 and now > self._time_since:
            self.log("train/tokens_per_s", self._tokens_since / (now - self._time_since), prog_bar=True)
            self._tokens_since, self._time_since = 0.0, now

    def budget_spent(self) -> float:
        """Share of the training budget used: steps or minutes, whichever runs out first."""
        t = self.cfg.trainer
        by_steps = self.global_step / t.max_steps
        by_time = self.train_seconds / (60.0 * t.max_minutes) if t.max_minutes else 0.0
        return max(by_steps, by_time)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._step_started
        if self.global_step >= self.trainer.max_steps or self.budget_spent() >= 1.0:
            self.trainer.should_stop = True  # makes Lightning validate after the final step too

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [  # nanoGPT: decay matrices and embeddings, not biases or LayerNorm gains
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.optimizer.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # Lightning clips gradients itself under mixed precision, which a fused AdamW does not allow
        fused = (self.device.type == "cuda" and not self.cfg.optim.grad_clip) or None
        optimizer = LazyAdamW(
            groups, lr=o.optimizer.lr, betas=tuple(o.optimizer.betas), eps=o.optimizer.eps, fused=fused
        )
        warmup, min_ratio = o.scheduler.warmup_steps, o.scheduler.min_lr_ratio
        if self.cfg.trainer.max_minutes:  # decay over the time budget (or max_steps, if sooner)

            def factor(step: int) -> float:
                return lr_factor(step, warmup, 1.0, min_ratio, progress=self.budget_spent())
        else:
            factor = functools.partial(
                lr_factor, warmup=warmup, max_steps=self.cfg.trainer.max_steps, min_ratio=min_ratio
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        ids = getattr(self.model, "item", None)
        if ids is not None and self.trainer.world_size > 1:
            ids.embed.sparse = False  # DDP over NCCL reduces dense gradients only

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if gradient_clip_val and any(p.grad is not None and p.grad.is_sparse for p in params):
            clip_grad_norm(params, gradient_clip_val)  # Lightning's clipping refuses sparse gradients
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_validation_start(self) -> None:
        self._tokens_since, self._time_since = 0.0, None  # tokens/s measures training only
        if self.trainer.training or self.trainer.state.fn == TrainerFn.FITTING:
            self.log("train/seconds", self.train_seconds)  # x axis of quality-vs-compute curves

    # evaluation: the decoder's evaluate_split shards users over ranks and gathers the results
    def _evaluate(self, split: Split, prefix: str) -> None:
        e = self.cfg.eval
        # decode with `madrec evaluate`'s precision: Lightning runs this step under the run's
        # bf16 autocast, which on a bf16 CPU would reorder near-tied items (evaluate_split
        # applies its own bf16 autocast on CUDA and decodes in fp32 on a CPU)
        with torch.autocast("cpu", enabled=False):
            metrics = evaluate_split(
                self.model,
                self.vocab,
                self.sids,
                split,
                self.max_len,
                ks=tuple(e.ks),
                beam_size=e.beam_size,
                batch_size=e.batch_size or default_batch_size(self.device),
                device=self.device,
            )
        metrics = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        self.results.update(metrics)
        # identical on every rank already; sync_dist averages equal numbers (exact) and keeps Lightning quiet
        self.log_dict(metrics, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(self.splits["val"], "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(self.splits["test"], "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["madrec"] = payload(self.cfg, self.vocab, self.sids, self.item_ids, self.max_len)
        checkpoint["madrec"].update(train_seconds=self.train_seconds, tokens_seen=self.tokens_seen)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("madrec", {})
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.tokens_seen = float(meta.get("tokens_seen", 0.0))
