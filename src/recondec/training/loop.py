"""The training loop: stages one after another, epochs, steps, validation and checkpoints, top to bottom.

What a stage sets up (freezing, LRs, optimiser) is ``stages.py``'s; how a model is evaluated is ``evaluate.py``'s;
whether the unsupervised objective acts and the decoder lives is ``diagnostics.py``'s.

Checkpoints are written at the end of every epoch, every ``trainer.checkpoint_every_n_steps`` steps and
when a preemption signal arrives; one written mid-epoch records how many batches of the epoch are done
and their running loss sums, so a resumed run skips exactly those batches and ends bit for bit where an
uninterrupted one would (``trainer.deterministic=true``, memory loader).
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from recondec.config import Config
from recondec.data import Loaders
from recondec.models import AugmentedLoss, AugmentedNet
from recondec.tracking.base import Tracker
from recondec.training import checkpoint as ckpt
from recondec.training.device import autocast, to_device
from recondec.training.diagnostics import ObjectiveMonitor, check_alive, run_medians
from recondec.training.distributed import DistEnv
from recondec.training.evaluate import Evaluator, VisualBatch
from recondec.training.reliability import NonFiniteGuard, PreemptionGuard, oom_hint
from recondec.training.stages import Stage, StageName, StageSetup, plan_stages, set_up_stage
from recondec.training.state import TrainState

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: Config, model: AugmentedNet, job_loss: AugmentedLoss, loaders: Loaders,
                 device: torch.device, tracker: Optional[Tracker] = None, env: DistEnv = DistEnv()):
        self.cfg, self.model, self.job_loss, self.loaders = cfg, model, job_loss, loaders
        self.device, self.tracker, self.env = device, tracker or Tracker(), env  # Tracker(): logs nothing
        self.quiet = not (cfg.trainer.progress and env.is_main)  # one set of progress bars: rank 0's
        self.evaluator = Evaluator(cfg, model, job_loss, device, self.quiet)
        # trainer.compile: the step's forward *and* its loss terms as one graph, so the losses' elementwise work
        # fuses with the model's. Guards on the stage and the wrapped net recompile it when a stage changes.
        if cfg.trainer.compile:
            # one job starts with empty dynamo caches: an in-process multirun's earlier jobs compiled the same code
            # for other models, and their entries count toward the recompile limit, past which dynamo silently
            # runs the step eagerly
            torch.compiler.reset()
        self._compiled_loss_terms = torch.compile(self._loss_terms) if cfg.trainer.compile else None
        self.stages = plan_stages(cfg.schedule, model.decoder is not None)
        self.total_epochs = self.stages[-1].end_epoch if self.stages else 0
        self.steps_per_epoch = len(loaders.train)
        if cfg.trainer.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.trainer.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"no full training batch: {loaders.num_train} images < schedule.batch_size="
                             f"{cfg.schedule.batch_size}")
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")
        self.state = TrainState()  # epoch, step, position in the epoch, best top-1, history: what checkpoints carry
        self.nonfinite = NonFiniteGuard(cfg.trainer.nonfinite)
        self.preemption = PreemptionGuard()
        self.ckpt_dir = ckpt.checkpoint_dir(cfg.output_dir)
        self.stage: Optional[Stage] = None
        self.setup: Optional[StageSetup] = None  # the current stage's net, loss, optimiser and LR schedule
        # semi-supervised: a stream of unlabelled batches beside the labelled one, cycled through on its own
        # (epoch, batch) position, which checkpoints carry; the baseline has no use for it
        self.unlabelled = loaders.unlabelled if model.decoder is not None else None
        self._unlabelled_iter = None
        # the objective's diagnostics and the live-decoder guard: fixed validation batches, the encoder as it starts
        # (built, seeded and loaded; before any checkpoint is loaded, so a resumed run measures from the same start);
        # no gradient shares when no stage trains the encoder (the objective cannot act on it)
        trains_encoder = any(not s.conf.freeze_encoder for s in self.stages)
        self.monitor = ObjectiveMonitor(model, job_loss, self._fixed_val_batches(cfg.trainer.diagnostic_batches),
                                        grad_shares=trains_encoder)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(x, y, self.device, self.cfg.trainer.channels_last)

    def _fixed_val_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = []
        self.loaders.val.set_epoch(0)
        for x, y in self.loaders.val:
            x, y = self._to_device(x, y)
            batches.append((x.float().clone(), y.clone()))  # ffcv reuses its buffers
            if len(batches) == n:
                break
        return batches

    # ------------------------------------------------------------------ stages
    def stage_at(self, epoch: int) -> Stage:
        return next(s for s in self.stages if s.first_epoch <= epoch < s.end_epoch)

    @property
    def data_epoch(self) -> int:
        """The epoch within the current stage: it seeds the data order. Every stage sees the same sequence of
        orders, so a variant's joint stage and the baseline's (which has no decoder stages before it) see the
        same batches."""
        return self.state.epoch - self.stage.first_epoch

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.setup.optimizer

    def enter_stage(self, stage: Stage, reseed: bool = True) -> None:
        """The stage's set-up (stages.py). The global RNG is reseeded from (seed, stage) first, so what a stage
        draws (dropout) does not depend on the stages before it: a variant and the baseline draw the same masks
        in their joint stages."""
        self.stage = stage
        if reseed:
            torch.manual_seed(self.cfg.trainer.seed * 1_000 + stage.seed)
        self.setup = set_up_stage(stage, self.model, self.job_loss, self.cfg, self.device, self.env,
                                  self.steps_per_epoch, self._first_train_images,
                                  [x for x, _ in self.monitor.batches])  # probes judge on validation
        if self.setup.metrics:
            self.tracker.log_metrics(self.setup.metrics, step=self.state.epoch)
        log.info("stage %s: epochs %d-%d, %s, %s", stage.name, stage.first_epoch + 1, stage.end_epoch,
                 self.setup.lr_text, "encoder frozen" if stage.conf.freeze_encoder else "end to end")

    def _first_train_images(self, n: int) -> list[torch.Tensor]:
        self.loaders.train.set_epoch(self.data_epoch)
        images = []
        for x, y in self.loaders.train:
            images.append(self._to_device(x, y)[0])
            if len(images) == n:
                break
        return images

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        with self.preemption.installed():
            return self._fit()

    def _fit(self) -> dict[str, float]:
        # a run resumed after its last epoch has nothing to train: its result is the last epoch's
        last = {k: v for k, v in self.state.history[-1].items() if k != "epoch"} if self.state.history else {}
        while self.state.epoch < self.total_epochs:
            stage = self.stage_at(self.state.epoch)
            if stage is not self.stage:
                self.enter_stage(stage)
            last = {f"train/{k}": v for k, v in self.train_epoch().items()}
            self.state.epoch += 1
            val, visual, is_best = self._validate_if_due()
            last.update(val)
            self._end_epoch(last, visual, is_best)
        medians = run_medians(self.state.history)
        if medians:
            self.tracker.log_metrics(medians, step=self.state.epoch)
        return last | medians

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        first = self.state.batch_in_epoch  # > 0 when resuming mid-epoch: those batches are already done
        self.loaders.train.set_epoch(self.data_epoch, skip_batches=first)
        seen, start = 0, time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, initial=first, disable=self.quiet,
                   desc=f"epoch {self.state.epoch + 1}/{self.total_epochs} [{self.stage.name}]", leave=False,
                   dynamic_ncols=True)
        for i, (x, y) in enumerate(self.loaders.train, start=first):
            if i >= self.steps_per_epoch:
                break
            seen += self.train_step(x, y)
            self.state.batch_in_epoch = i + 1
            bar.update(1)
            if self.state.step % self.cfg.trainer.log_every_n_steps == 0:
                self._log_running_losses(bar, seen / (time.perf_counter() - start))
            self._step_boundary()
        bar.close()
        self.nonfinite.verify()
        metrics = {f"loss/{k}": v for k, v in self.state.running.compute().items()}
        metrics["img_per_s"] = seen * self.env.world_size / max(1e-9, time.perf_counter() - start)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.cfg.trainer.nonfinite == "skip":
            metrics["skipped_batches"] = self.nonfinite.skipped
        self.state.start_epoch()
        return metrics

    def _log_running_losses(self, bar, img_per_s: float) -> None:
        """The epoch's running means so far, against the global step: with verify(), the only host syncs."""
        self.nonfinite.verify()
        means = self.state.running.compute()
        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k in ("total", "ce")} |
                        {"img/s": f"{img_per_s:.0f}"})
        if means:
            self.tracker.log_metrics({f"train_step/loss/{k}": v for k, v in means.items()} |
                                     {"train_step/lr": self.optimizer.param_groups[0]["lr"]}, step=self.state.step)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """One optimiser step (skipped for a non-finite loss with trainer.nonfinite=skip); returns the batch size."""
        x, y = self._to_device(x, y)
        xu = self._next_unlabelled() if self.unlabelled is not None else None
        with oom_hint("training step", self.cfg.schedule.batch_size, self.cfg.trainer.precision, self.device):
            with autocast(self.device, self.cfg.trainer.precision):
                terms = self.loss_terms(x, y, xu)
            self.optimizer.zero_grad(set_to_none=True)
            admitted = self.nonfinite.admit(terms, self.state.step + 1)
            if admitted:
                self.scaler.scale(terms["total"]).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.state.running.update(terms)
        self._advance_schedule(after_skip=not admitted)
        self.state.step += 1
        return x.shape[0]

    def _advance_schedule(self, after_skip: bool) -> None:
        """One LR-schedule step per batch, skipped or not (the schedule counts batches). After a skipped batch that
        was its stage's first, torch warns that the schedule stepped before its optimiser: meant here, so silenced."""
        if not after_skip:
            self.setup.scheduler.step()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
            self.setup.scheduler.step()

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, xu: Optional[torch.Tensor] = None) -> dict:
        """The stage's loss terms. With unlabelled images, one forward pass over both batches: cross-entropy over the
        labelled rows, each reconstruction term the mean over all rows, so that the reconstruction-to-cross-entropy
        balance is the labelled-only step's ("more data", not "a heavier reconstruction weight")."""
        return (self._compiled_loss_terms or self._loss_terms)(x, y, xu)

    def _loss_terms(self, x: torch.Tensor, y: torch.Tensor, xu: Optional[torch.Tensor]) -> dict:
        inputs = x if xu is None else torch.cat([x, xu])
        out = self.setup.net(inputs, decode=self.model.decoder is not None,
                             layerwise=self.stage.name is StageName.pretrain)
        return self.setup.loss(out, inputs, y)

    def _next_unlabelled(self) -> torch.Tensor:
        pos = self.state.unlabelled
        if self._unlabelled_iter is None:
            self.unlabelled.set_epoch(pos["epoch"], skip_batches=pos["batch"])
            self._unlabelled_iter = iter(self.unlabelled)
        batch = next(self._unlabelled_iter, None)
        if batch is None:  # the unlabelled pool is used up: its next epoch, in a new order
            pos["epoch"], pos["batch"] = pos["epoch"] + 1, 0
            self.unlabelled.set_epoch(pos["epoch"])
            self._unlabelled_iter = iter(self.unlabelled)
            batch = next(self._unlabelled_iter)
        pos["batch"] += 1
        return self._to_device(*batch)[0]

    def _step_boundary(self) -> None:
        """The periodic mid-epoch checkpoint (the epoch's last step gets the end-of-epoch one) and the
        preemption exit."""
        every = self.cfg.trainer.checkpoint_every_n_steps
        periodic = bool(every) and self.state.step % every == 0 and self.state.batch_in_epoch < self.steps_per_epoch
        if periodic or self.preemption.requested:
            self.save_checkpoint()
        self._exit_if_preempted()

    def _exit_if_preempted(self) -> None:
        if self.preemption.requested:
            raise self.preemption.exception(self.state.step)

    # ------------------------------------------------------------------ the end of an epoch
    def _validate_if_due(self) -> tuple[dict[str, float], Optional[VisualBatch], bool]:
        """Every trainer.val_every_n_epochs and after the last epoch: the "val/..." metrics with the objective's
        diagnostics, the figures' batch, and whether top-1 is the best so far. After the last epoch also the test
        set, once ("test/...")."""
        final = self.state.epoch == self.total_epochs
        if self.state.epoch % self.cfg.trainer.val_every_n_epochs and not final:
            return {}, None, False
        val, visual = self.evaluator.evaluate(self.loaders.val, ssim=self._is_figure_epoch())
        metrics = {f"val/{k}": v for k, v in val.items()} | self.monitor.metrics()
        is_best = val["top1"] > self.state.best_top1
        self.state.best_top1 = max(self.state.best_top1, val["top1"])
        metrics["val/best_top1"] = self.state.best_top1
        if final:
            metrics.update(self.evaluator.final(self.loaders))
        return metrics, visual, is_best

    def _end_epoch(self, metrics: dict[str, float], visual: Optional[VisualBatch], is_best: bool) -> None:
        """History, logs, figures, the live-decoder guard at a stage's end, then the checkpoint: a crash in between
        repeats a log, never loses one, and a stage that killed its decoder is never checkpointed as done."""
        self.state.history.append({"epoch": self.state.epoch, **metrics})
        self.tracker.log_metrics(metrics, step=self.state.epoch)
        self._log_figures(visual)
        if self.state.epoch == self.stage.end_epoch:
            self.check_decoder_alive()
        self.save_checkpoint("best.pt" if is_best else None)
        self._exit_if_preempted()

    def check_decoder_alive(self) -> None:
        """After a stage that trained decoders: every level it trained must still depend on the input."""
        if self.model.decoder is None:
            return
        pretraining = self.stage.name is StageName.pretrain
        ratios = self.monitor.input_dependence(layerwise=pretraining)
        levels = list(ratios) if pretraining else list(self.job_loss.weights)
        self.tracker.log_metrics({f"decoder/input_dependence/{k}": v for k, v in ratios.items()}, step=self.state.epoch)
        check_alive(ratios, levels, self.stage.name, self.cfg.trainer.dead_decoder_threshold,
                    self.cfg.trainer.dead_decoder)

    def _is_figure_epoch(self) -> bool:
        """Every trainer.figures_every_n_epochs and after the last epoch: reconstruction grids and SSIM."""
        return self.state.epoch == self.total_epochs or self.state.epoch % self.cfg.trainer.figures_every_n_epochs == 0

    def _log_figures(self, visual: Optional[VisualBatch]) -> None:
        """Reconstruction grids on figure epochs; the error plot at the end."""
        if visual is None:
            return
        final = self.state.epoch == self.total_epochs
        if self._is_figure_epoch():
            self.tracker.log_reconstructions(visual, self.state.epoch, final)
        if final:
            self.tracker.log_error_plot(self.state.history)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """Everything a resumed run needs (the layout: training/state.py)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.setup.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "stage": str(self.stage.name), "skipped_batches": self.nonfinite.skipped,
                "mlflow_run_id": self.tracker.run_id, **self.state.to_dict()}

    def save_checkpoint(self, also_as: Optional[str] = None) -> Path:
        self.nonfinite.verify()  # never replace the last good checkpoint by one written after a NaN
        path = self.ckpt_dir / "last.pt"
        if not self.env.is_main:  # rank 0 holds the same weights and writes for everyone
            return path
        state = self.checkpoint()
        ckpt.save_atomic(state, path, keep_previous=True)
        if also_as:
            ckpt.save_atomic(state, self.ckpt_dir / also_as)
        return path

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Continue where `state` stopped: same epoch, step, optimiser, schedule and random streams."""
        self.model.load_state_dict(state["model"])
        self.state = TrainState.from_dict(state, self.device)
        self.nonfinite.skipped, self._unlabelled_iter = state.get("skipped_batches", 0), None
        self.scaler.load_state_dict(state["scaler"])
        stage = self.stage_at(self.state.epoch) if self.state.epoch < self.total_epochs else None
        if stage is not None and state.get("stage") == stage.name:
            # mid-stage: keep the optimiser's momentum and the LR position, then the random streams
            self.enter_stage(stage, reseed=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.setup.scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
        else:  # at a stage boundary: the next stage starts (and reseeds) as in an uninterrupted run
            ckpt.set_rng_state(state["rng"])
            if stage is not None:
                self.enter_stage(stage)
        log.info("resumed at epoch %d, batch %d (step %d)", self.state.epoch + 1, self.state.batch_in_epoch,
                 self.state.step)
