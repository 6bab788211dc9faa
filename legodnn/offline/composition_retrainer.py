"""Composition-aware retraining: descendants learn to work beside pruned neighbours.

After block-level distillation, every descendant reproduces its teacher block on the
teacher's inputs. This stage trains sampled *whole compositions* end to end against
the teacher's output (:func:`~legodnn.offline.composition.distillation_loss`), so that
the errors of neighbouring descendants stop compounding. Per batch the teacher runs
once; each composition of the sandwich (:class:`SandwichSampler`) then runs forward
and backward, its gradients accumulating into the descendants it uses, and one
optimizer step follows. Only descendants change: the frame and the sparsity-0 blocks
(the teacher's own) are frozen and stay bit-identical.

It keeps the block retrainer's guarantees: a progress bar (or none), the state on
disk after each epoch and every ``checkpoint_seconds`` seconds or ``checkpoint_steps``
steps within one (:mod:`~legodnn.offline.checkpoints`), so an interrupted run resumes
and ends with the same weights, a non-finite loss stops with a message, and the
weights kept are those with the lowest held-out loss over a fixed set of compositions.
Memory holds one batch's graph of one composition at a time.

Under ``torchrun`` it is data-parallel (:mod:`~legodnn.offline.distributed`): every rank
samples the same compositions (they depend on the epoch and step alone), runs them on
its shard of the batch, and the gradients are averaged before the step. With
``sync_batchnorm=True`` the descendants' BatchNorm (``batchnorm="train"``) normalises
with the statistics of every rank's shard together (:mod:`~legodnn.offline.sync_batchnorm`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..blockmanager.store import claim_path, mark_work_dir
from ..errors import LegoDNNError
from ..validation import check_bool
from .checkpoints import (
    CheckpointClock,
    CheckpointFolder,
    check_checkpoint_options,
    resume_epoch,
    set_rng_state,
    share_rng_state,
)
from .composition import SandwichSampler, SwitchableModel, distillation_loss
from .distributed import SplitBatches, batch_len, current_ranks, shard_loader, start_epoch
from .guards import finite_loss
from .precision import LossScaler, record_precision, resolve_precision, restore_precision
from .sync_batchnorm import convert_batchnorm

__all__ = ["CompositionStage", "CompositionRetrainer", "CompositionHistory"]

logger = logging.getLogger(__name__)

Key = Tuple[str, float]
LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class CompositionHistory:
    """Per epoch: mean training loss over sampled compositions and held-out loss over fixed ones."""

    train: Tuple[float, ...]
    val: Tuple[float, ...]
    best_epoch: int  # 1-based; 0 when no epoch beat the weights the stage started from
    validation_compositions: Tuple[Tuple[float, ...], ...]


def _key_name(key: Key) -> str:
    return f"{key[0]}@{key[1]:g}"


def _flatten(parts: Dict[Key, Any]) -> Dict[str, torch.Tensor]:
    """Every descendant's tensors in one dict ("block_3@0.6/conv.weight"), for one file;
    ``parts`` holds modules or their state dicts."""
    return {f"{_key_name(k)}/{n}": v for k, m in parts.items()
            for n, v in (m.state_dict() if isinstance(m, nn.Module) else m).items()}


def _unflatten(tensors: Dict[str, torch.Tensor], keys: Iterable[Key]) -> Dict[Key, Dict[str, torch.Tensor]]:
    out: Dict[Key, Dict[str, torch.Tensor]] = {k: {} for k in keys}
    names = {_key_name(k): k for k in out}
    for flat, value in tensors.items():
        prefix, _, name = flat.partition("/")
        out[names[prefix]][name] = value
    return out


def _model_output(model_manager: Any, model: nn.Module, batch: Any, device: str) -> Any:
    """The model's output with autograd on, through the manager (duck-typed managers that
    predate ``forward_for_training`` get its default: the batch's first item)."""
    forward = getattr(model_manager, "forward_for_training", None)
    if forward is not None:
        return forward(model, batch, device)
    data = batch[0] if isinstance(batch, (list, tuple)) else batch
    return model(data.to(device))


def _class_labels(out: Any, batch: Any) -> Optional[torch.Tensor]:
    """The batch's class labels when ``out`` holds class scores for them, else ``None``."""
    labels = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.is_floating_point()
            and isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.shape == out.shape[:1]):
        return None
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < out.shape[1]):
        return None
    return labels


class CompositionStage:
    """The training loop on descendants held in memory (used by both retrainers).

    ``state_dir`` holds the resume state; :meth:`run` returns the best weights per
    descendant and the history. State for other starting weights or options is an error,
    or, with ``restart_stale`` (the block retrainer, whose own earlier epochs made it),
    discarded. Besides the end of every epoch, a checkpoint is saved after the step that
    ends ``checkpoint_seconds`` seconds (default 60: at most about a minute of work is
    lost to a kill) or ``checkpoint_steps`` steps (default ``None``: by time only) since
    the last one; these two do not change the training, so they may differ between runs.
    With a process group of several ranks the stage is data-parallel unless
    ``data_parallel=False`` (the loaders are sharded, gradients averaged, held-out
    losses reduced; rank 0 writes the state). ``amp`` (``None``: fp32; ``"bf16"``;
    ``"fp16"``, CUDA only, with loss scaling) runs the teacher's and the compositions'
    forwards under autocast, losses and steps in fp32; ``channels_last=True`` holds the
    frame, the blocks and the images in NHWC layout while the stage runs
    (:mod:`~legodnn.offline.precision`); with both off nothing changes, bit for bit.
    ``sync_batchnorm=True`` (default ``False``), with several data-parallel ranks and
    ``batchnorm="train"``: the descendants' BatchNorm normalises with every rank's
    samples together, as one process over the whole batch (nothing changes with one
    process). Loaders split by :class:`~legodnn.offline.distributed.SplitBatches` (every
    rank reads every batch and takes its slice: after descendant-parallel block
    training) get rank 0's random generators at the start of each epoch, so that the
    ranks split the same batches.

    The default sandwich is every whole level at every step plus ``num_random=1`` random
    composition (``every_level=True``): on CIFAR-10 (an 82.85% ResNet-18 teacher, 8 block
    epochs then 4 of this stage, 20,000 images, 10,000 test images) it gave 82.56 /
    81.63 / 79.75% with every block at 0.3 / 0.6 / 0.8 against 82.15 / 81.29 / 78.97% for
    one level in turn plus two random compositions, at the same four compositions per
    step; ten random compositions lost 0.44 point on average (79.52% against 79.96%).

    The default recipe (SGD with Nesterov momentum at 0.01, cosine to 0; descendants'
    BatchNorm following the batches; KL at temperature 2 plus the labels' cross-entropy
    for a classifier) was chosen on CIFAR-10 (a 71% ResNet-18 teacher, 4,000 images, one
    epoch after two of block distillation; accuracy of every block at 0.3 / 0.6 / 0.8):
    block distillation alone 73.4 / 70.5 / 55.2%; Adam 3e-4 with frozen BatchNorm and
    the KL alone 70.8 / 69.0 / 63.4%; the same with BatchNorm following the batches
    70.5 / 71.2 / 65.6%; plus cross-entropy 76.0 / 74.7 / 66.9%; SGD 0.01 instead of
    Adam 75.8 / 75.0 / 70.7%. Adam moves every weight by about its step size whatever
    the gradient, so descendants that already fit drift; SGD moves them in proportion.
    """

    def __init__(
        self,
        block_manager: AutoBlockManager,
        model_manager: Any,
        max_epoch: int,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any],
        state_dir: Path,
        device: str = "cpu",
        *,
        lr: float = 0.01,
        num_random: int = 1,
        every_level: bool = True,
        temperature: float = 2.0,
        batchnorm: str = "train",
        feature_weight: float = 0.0,
        label_weight: Optional[float] = None,
        optimizer: str = "sgd",
        loss_fn: Optional[LossFn] = None,
        seed: int = 0,
        verbose: bool = True,
        restart_stale: bool = False,
        checkpoint_seconds: Optional[float] = 60.0,
        checkpoint_steps: Optional[int] = None,
        data_parallel: bool = True,
        amp: Optional[str] = None,
        channels_last: bool = False,
        sync_batchnorm: bool = False,
    ) -> None:
        self.sync_batchnorm = check_bool("sync_batchnorm", sync_batchnorm,
                                         "pass sync_batchnorm=True to normalise with every rank's samples together")
        if isinstance(max_epoch, bool) or not isinstance(max_epoch, int) or max_epoch < 1:
            raise LegoDNNError(f"composition epochs must be a whole number >= 1, got {max_epoch!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise LegoDNNError(f"composition lr must be a positive finite number, got {lr!r}")
        if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < 0:
            raise LegoDNNError(f"composition num_random must be a whole number >= 0, got {num_random!r}")
        if not isinstance(every_level, bool):
            raise LegoDNNError(f"every_level must be True or False, got {every_level!r}")
        if not (isinstance(feature_weight, (int, float)) and math.isfinite(feature_weight) and feature_weight >= 0):
            raise LegoDNNError(f"feature_weight must be a finite number >= 0, got {feature_weight!r}")
        if label_weight is not None and not (
                isinstance(label_weight, (int, float)) and math.isfinite(label_weight) and label_weight >= 0):
            raise LegoDNNError(f"label_weight must be None (automatic) or a finite number >= 0, got {label_weight!r}")
        if optimizer not in ("adam", "sgd"):
            raise LegoDNNError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if batchnorm not in ("frozen", "train"):
            raise LegoDNNError(f"batchnorm must be 'frozen' or 'train', got {batchnorm!r}")
        self.checkpoint_seconds, self.checkpoint_steps = check_checkpoint_options(checkpoint_seconds, checkpoint_steps)
        self.bm, self.mm = block_manager, model_manager
        self.max_epoch = max_epoch
        self.precision = resolve_precision(amp, channels_last, device)
        self.ranks = current_ranks(data_parallel, device)
        pin = torch.device(device).type == "cuda"
        self.train_loader = shard_loader(train_loader, self.ranks, train=True, seed=seed,
                                         pin_memory=pin)  # kept if sharded already
        self.val_loader = shard_loader(val_loader, self.ranks, train=False, pin_memory=pin)
        self.state_dir = Path(state_dir)
        self._checkpoints = CheckpointFolder(self.state_dir, self.ranks)
        self.device = device
        self.lr, self.batchnorm, self.verbose = float(lr), batchnorm, verbose and self.ranks.is_main
        self.feature_weight = float(feature_weight)
        self.restart_stale = restart_stale
        self.label_weight = label_weight if label_weight is None else float(label_weight)
        self.optimizer = optimizer
        self.temperature = float(temperature)
        self.loss_fn: LossFn = loss_fn or (lambda s, t: distillation_loss(s, t, self.temperature))
        self.sampler = SandwichSampler(tuple(block_manager.block_sparsity), len(block_manager.block_names),
                                       num_random, seed, every_level)

    # -- state --------------------------------------------------------------------
    def _fingerprint(self, students: Dict[Key, nn.Module]) -> str:
        """What the state belongs to: the model, the options and the starting weights."""
        h = hashlib.sha256(self.bm.fingerprint.encode())
        h.update(repr((self.max_epoch, self.lr, self.batchnorm, self.feature_weight, self.label_weight,
                       self.optimizer, self.temperature, self.sampler)).encode())
        for key in sorted(students):
            for name, value in sorted(students[key].state_dict().items()):
                h.update(name.encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _load(self, students: Dict[Key, nn.Module], optim: torch.optim.Optimizer, fingerprint: str
              ) -> Dict[str, torch.Tensor]:
        """Load the last checkpoint into ``students`` and ``optim``; returns the best weights so far.

        Sets ``self._state`` (what ``state.json`` holds; fresh without a checkpoint) and
        ``self._rng`` (the generators' states the checkpoint recorded; the global ones
        are set to its "now", where an uninterrupted run would have them).
        """
        fresh = {"epochs_done": 0, "position": None, "train": [], "val": [], "best_val": math.inf, "best_epoch": 0,
                 "fingerprint": fingerprint}
        state = self._checkpoints.read_state()
        self._rng: Optional[Dict[str, Any]] = None
        if state is not None and state.get("fingerprint") != fingerprint and self.restart_stale:
            # the block epochs before this stage produced other weights: the state is ours and obsolete
            logger.info("composition-training state in %s is for other starting weights; starting over", self.state_dir)
            self._checkpoints.discard_state()
            state = None
        if state is None:
            self._state = fresh
            return {k: v.detach().clone() for k, v in _flatten(students).items()}
        if state.get("fingerprint") != fingerprint:
            raise LegoDNNError(
                f"{self.state_dir} holds composition-training state for other blocks, weights or options; "
                "delete it (or choose another trained_blocks_dir) to start over"
            )
        if "files" not in state:  # written before mid-epoch checkpoints: files named by the epoch
            state["files"] = {kind: f"epoch{state['epochs_done']}.{kind}.{ext}"
                              for kind, ext in (("last", "safetensors"), ("best", "safetensors"), ("optim", "pt"))}
        checkpoint = self._checkpoints.load(state)
        last = _unflatten(checkpoint.last, students)
        for key, student in students.items():
            student.load_state_dict(last[key])
        optim.load_state_dict(checkpoint.optim)
        self._rng = checkpoint.rng
        if self._rng is not None:
            set_rng_state(self._rng["now"], self.train_loader)
        self._state = {**fresh, **state}
        restore_precision(self._state, self.precision, self._scaler, "composition training")
        position = self._state["position"]
        logger.info("resuming composition training after epoch %d%s", state["epochs_done"],
                    f" and {position['step']} steps" if position else "")
        return checkpoint.best

    def _save(self, students: Dict[Key, nn.Module], optim: torch.optim.Optimizer,
              epoch_start_rng: Optional[Dict[str, Any]] = None) -> None:
        """A checkpoint: the live weights, the optimizer state, ``self._state`` (epochs done,
        history, position within the epoch) and the best weights when they changed since
        the last one. ``epoch_start_rng``: the generators at the start of the epoch, for a
        mid-epoch checkpoint."""
        record_precision(self._state, self.precision, self._scaler)
        self._checkpoints.save(self._state, _flatten(students), None if self._best_saved else self._best,
                               optim.state_dict(), epoch_start_rng, self.train_loader)
        self._best_saved = True
        self._clock.restart()

    # -- training -----------------------------------------------------------------
    def run(self, students: Dict[Key, nn.Module]) -> Tuple[Dict[Key, Dict[str, torch.Tensor]], CompositionHistory]:
        """Train ``students`` (modified in place) and return the best weights and the history."""
        fingerprint = self._fingerprint(students)
        params = [p for s in students.values() for p in s.parameters()]
        optim = (torch.optim.Adam(params, lr=self.lr) if self.optimizer == "adam"
                 else torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True))
        self._clock = CheckpointClock(self.checkpoint_seconds, self.checkpoint_steps)
        self._scaler = LossScaler(self.precision)
        self._best = self._load(students, optim, fingerprint)
        if self.sync_batchnorm and self.batchnorm == "train":  # frozen BatchNorm reads no batch statistics
            convert_batchnorm(students.values(), self.ranks)
        state = self._state
        self._best_saved = "checkpoint" in state  # the checkpoint just read holds them
        net = SwitchableModel(self.bm, students)
        # the teacher in eval mode: a manager's forward restores the mode a model had, recursively, and the
        # teacher shares its frame and blocks with net.model (in training mode they would update BatchNorm)
        self.bm.teacher.eval()
        validation = self.sampler.validation_set()
        with contextlib.ExitStack() as stack:
            stack.callback(net.restore)
            stack.enter_context(self.precision.layout([net.model, self.bm.teacher]))
            if state["epochs_done"] == 0 and not math.isfinite(state["best_val"]):
                state["best_val"] = self._validate(net, validation)  # the block-trained weights compete too
            steps = self._steps_per_epoch()
            for epoch in range(state["epochs_done"], self.max_epoch):
                train_loss = self._epoch(net, optim, epoch, steps, students)
                val_loss = self._validate(net, validation)
                state["train"].append(train_loss)
                state["val"].append(val_loss)
                if val_loss < state["best_val"]:
                    state["best_val"], state["best_epoch"] = val_loss, epoch + 1
                    self._best = {k: v.detach().clone() for k, v in _flatten(students).items()}
                    self._best_saved = False
                state["epochs_done"] = epoch + 1
                self._save(students, optim)
                if self.verbose:
                    tqdm.write(f"composition epoch {epoch + 1}/{self.max_epoch}: train loss {train_loss:.4g}, "
                               f"held-out loss {val_loss:.4g}")
        history = CompositionHistory(tuple(state["train"]), tuple(state["val"]), int(state["best_epoch"]),
                                     tuple(validation))
        return _unflatten(self._best, students), history

    def _steps_per_epoch(self) -> Optional[int]:
        try:
            return len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _set_lr(self, optim: torch.optim.Optimizer, epoch: int, step: int, steps: Optional[int]) -> None:
        """Cosine from ``lr`` to 0 over the stage, from (epoch, step) alone so resuming repeats it."""
        if steps is None:
            progress = epoch / self.max_epoch
        else:
            progress = (epoch * steps + step) / max(1, self.max_epoch * steps)
        for group in optim.param_groups:
            group["lr"] = self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _epoch(self, net: SwitchableModel, optim: torch.optim.Optimizer, epoch: int, steps: Optional[int],
               students: Dict[Key, nn.Module]) -> float:
        """One epoch, saving a checkpoint whenever the clock says so; an epoch a mid-epoch
        checkpoint stopped in continues after the steps it had done."""
        net.train_descendants(self.batchnorm)
        state = self._state
        position = state["position"] if epoch == state["epochs_done"] else None
        done = position["step"] if position else 0
        # a checkpoint's sums are over every rank: rank 0 carries them on
        total, count = (float(position["total"]), int(position["count"])) if position and self.ranks.is_main else (0.0, 0)
        start_epoch(self.train_loader, epoch)
        if isinstance(self.train_loader, SplitBatches) and not done:  # the ranks split the same batches: rank 0's
            share_rng_state(self.ranks, self.train_loader)
        epoch_start_rng, batches = resume_epoch(self.train_loader, done, self._rng)
        bar = tqdm(batches, desc=f"composition training {epoch + 1}/{self.max_epoch}", initial=done, total=steps,
                   disable=not self.verbose, leave=False)
        for step, batch in enumerate(bar, done):
            batch = self.precision.batch(batch)
            target, features = self._teacher(batch)
            self._set_lr(optim, epoch, step, steps)
            optim.zero_grad(set_to_none=True)
            for config in self.sampler.sample(epoch, step):
                net.select(config)
                loss = self._loss(net, batch, target, features)
                value = finite_loss(loss, f"composition {list(config)}", epoch, "composition_lr=...", self.state_dir,
                                    "distillation loss")
                self._scaler.scale(loss).backward()
                total += value
                count += 1
            self.ranks.average_gradients(list(students.values()))
            self._scaler.step(optim)
            self._scaler.update()
            if self.ranks.any(self._clock.step_done(), "agreeing on a checkpoint"):
                total, count = self._fold(total, count)
                state["position"] = {"step": step + 1, "total": total, "count": count}
                self._save(students, optim, epoch_start_rng)
                if not self.ranks.is_main:
                    total, count = 0.0, 0
        total, count = self._fold(total, count)
        if count == 0:
            raise LegoDNNError("train_loader yielded no batches; composition retraining needs training data")
        state["position"] = None
        return total / count

    def _fold(self, total: float, count: int) -> Tuple[float, int]:
        """A loss sum and its count over every rank (unchanged with one process)."""
        total, count = self.ranks.sum_floats([total, count], "summing the losses")
        return total, int(count)

    def _teacher(self, batch: Any) -> Tuple[Any, Dict[str, List[torch.Tensor]]]:
        """The teacher's output and, when features count, every block's outputs (fp32: with
        ``amp`` the forward runs under autocast)."""
        if not self.feature_weight:
            return self._teacher_output(batch), {}
        features: Dict[str, List[torch.Tensor]] = {n: [] for n in self.bm.block_names}
        handles = [self.bm.get_block(n).register_forward_hook(
            lambda _m, _a, out, n=n: features[n].append(out.detach())) for n in self.bm.block_names]
        try:
            out = self._teacher_output(batch)
        finally:
            for h in handles:
                h.remove()
        return out, self.precision.fp32(features)

    def _teacher_output(self, batch: Any) -> Any:
        with self.precision.autocast():
            out = self.mm.forward_to_gen_mid_data(self.bm.teacher, batch, self.device)
        return self.precision.fp32(out)

    def _loss(self, net: SwitchableModel, batch: Any, target: Any, features: Dict[str, List[torch.Tensor]]) -> torch.Tensor:
        """Output distillation, plus ``label_weight`` times the cross-entropy with the batch's
        labels (class scores only) and ``feature_weight`` times the blocks' relative feature error."""
        got: Dict[str, List[torch.Tensor]] = {n: [] for n in net.block_names}
        handles = [slot.register_forward_hook(lambda _m, _a, out, n=n: got[n].append(out))
                   for n, slot in net.slots.items()] if self.feature_weight else []
        try:
            with self.precision.autocast():
                out = _model_output(self.mm, net.model, batch, self.device)
        finally:
            for h in handles:
                h.remove()
        out, got = self.precision.fp32(out), self.precision.fp32(got)
        loss = self.loss_fn(out, target)
        labels = _class_labels(out, batch)
        weight = self.label_weight if self.label_weight is not None else (1.0 if labels is not None else 0.0)
        if weight:
            if labels is None:
                raise LegoDNNError("label_weight > 0 needs class scores and (data, labels) batches; use 0 for this task")
            loss = loss + weight * F.cross_entropy(out, labels.to(out.device))
        if not self.feature_weight:
            return loss
        terms = [((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-8)
                 for n in net.block_names for s, t in zip(got[n], features[n])]
        return loss + self.feature_weight * sum(terms) / max(1, len(terms))

    @torch.no_grad()
    def _validate(self, net: SwitchableModel, validation: List[Tuple[float, ...]]) -> float:
        """Mean held-out loss over the fixed compositions, weighted by samples, so that
        sharded data (other batches on each rank) gives one process's value."""
        net.model.eval()
        total, count = 0.0, 0
        for batch in self.val_loader:
            batch = self.precision.batch(batch)
            target, features = self._teacher(batch)  # the loss that trains, features included
            n = batch_len(batch)
            for config in validation:
                net.select(config)
                total += float(self._loss(net, batch, target, features)) * n
                count += n
        total, count = self._fold(total, count)
        if count == 0:
            raise LegoDNNError("the held-out loader yielded no batches; give val_loader or more training data")
        return total / count


class CompositionRetrainer:
    """Composition-aware retraining of a trained blocks directory into a new one.

    Reads the descendants of ``source_blocks_dir`` (usually written by
    :class:`BlockRetrainer`), trains them by :class:`CompositionStage` and writes a
    complete blocks directory to ``target_blocks_dir`` (its ``training/composition/``
    holds the resume state). ``BlockRetrainer(..., composition_epochs=N)`` runs the same
    stage directly after block distillation instead.
    """

    def __init__(
        self,
        teacher_model: nn.Module,
        block_manager: AutoBlockManager,
        model_manager: Any,
        source_blocks_dir: str,
        target_blocks_dir: str,
        max_epoch: int,
        train_loader: Iterable[Any],
        val_loader: Optional[Iterable[Any]] = None,
        device: str = "cpu",
        verbose: bool = True,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        from .holdout import split_holdout

        if Path(source_blocks_dir).resolve() == Path(target_blocks_dir).resolve():
            raise LegoDNNError(
                f"target_blocks_dir {target_blocks_dir!r} is the source: write the retrained blocks to a new "
                "directory so the source stays intact until they are complete"
            )
        self.teacher = teacher_model
        self.block_manager = block_manager
        self.store = block_manager.open_store(source_blocks_dir)
        self.target = claim_path(target_blocks_dir, self.store.fingerprint, overwrite, "target_blocks_dir")
        if val_loader is None:
            train_loader, val_loader = split_holdout(train_loader)
        self.stage = CompositionStage(block_manager, model_manager, max_epoch, train_loader, val_loader,
                                      self.target / "training" / "composition", device, verbose=verbose, **options)
        self.device = device

    def train_all_compositions(self) -> CompositionHistory:
        """Train and write ``target_blocks_dir``; returns the per-epoch losses."""
        from .trained_store import write_trained_store

        bm = self.block_manager
        students = {(b, s): bm.load_descendant(self.store, b, s).to(self.device)
                    for b in bm.block_names for s in bm.block_sparsity if s > 0}
        ranks = self.stage.ranks
        if ranks.is_main:
            mark_work_dir(self.target)
        best, history = self.stage.run(students)
        if ranks.is_main:
            write_trained_store(self.store, self.target, best, {
                "composition_epochs": self.stage.max_epoch,
                "composition_best_epoch": history.best_epoch,
                "composition_best_val_loss": min((history.val[history.best_epoch - 1],) if history.best_epoch else (),
                                                 default=None),
            })
        ranks.barrier("waiting for rank 0 to write the retrained store")
        return history
