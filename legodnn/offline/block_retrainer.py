"""BlockRetrainer: block-level distillation of every descendant from the teacher's activations.

Per batch, one teacher forward captures every block's input and output; every
descendant of every block then takes one optimizer step to map the same input to the
same output. Memory holds one batch of activations, never the data set's. The state
is on disk after each epoch and, within an epoch, every ``checkpoint_seconds`` seconds
or ``checkpoint_steps`` steps (:mod:`~legodnn.offline.checkpoints`), so an interrupted
run resumes where it stopped and ends with the weights of an uninterrupted one; the
weights with the lowest held-out loss are the ones kept.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..blockmanager.atomic import write_text_atomic
from ..blockmanager.auto_block_manager import AutoBlockManager
from ..blockmanager.store import claim_path, mark_work_dir, sparsity_tag
from ..errors import InvalidArgumentError, LegoDNNError
from ..validation import (
    check_bool,
    check_device,
    check_first_batch,
    check_int,
    warn_if_ignored_teacher,
)
from .capture import capture_block_io
from .checkpoints import (
    CheckpointClock,
    CheckpointFolder,
    check_checkpoint_options,
    resume_epoch,
    set_rng_state,
    share_rng_state,
)
from .composition_retrainer import (
    CompositionHistory,
    CompositionStage,
    _class_labels,
    _flatten,
    _key_name,
    _unflatten,
)
from .distributed import (
    Ranks,
    SplitBatches,
    balanced_split,
    check_parallel,
    current_ranks,
    shard_loader,
    start_epoch,
)
from .guards import finite_loss
from .holdout import split_holdout
from .precision import (
    LossScaler,
    pin_memory,
    record_precision,
    resolve_precision,
    restore_precision,
)
from .sync_batchnorm import convert_batchnorm
from .trained_store import write_trained_store

__all__ = ["BlockRetrainer", "default_optimizer"]

logger = logging.getLogger(__name__)

Key = Tuple[str, float]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cpu(value: Any) -> Any:
    """``value`` (a state dict, an optimizer state) with its tensors on the CPU, for sending
    to another rank: pickled CUDA tensors would come back on the sender's device."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam at 1e-3: a safe default for regressing a block's output."""
    return torch.optim.Adam(params, lr=1e-3)


class BlockRetrainer:
    """Retrain every descendant block (sparsity > 0) against the teacher's blocks.

    ``trained_blocks_dir`` becomes a complete blocks directory (the same format as the
    compressed one, with trained weights) that the profilers and the switcher read, plus
    ``training/`` with the resume state and the loss history.
    ``val_loader`` gives the held-out data that picks the best epoch; without one,
    about 10% of ``train_loader``'s samples (at most 1,000) are held out.

    After the block epochs comes composition-aware retraining
    (:class:`~legodnn.offline.composition_retrainer.CompositionStage`): sampled whole
    compositions trained end to end against the teacher's output, so that descendants
    learn to work beside pruned neighbours. ``composition_epochs`` sets its length
    (``None``: automatic, see :meth:`_composition_stage`; ``0``: off, block distillation
    alone as in the original). ``composition_lr`` (SGD with Nesterov momentum, cosine to
    0), ``composition_samples`` (random compositions per step besides the whole levels),
    ``composition_every_level`` (every whole level at every step; ``False``: the smallest
    and one level in turn), ``temperature`` (of the logit distillation), ``batchnorm``
    (``"train"``: descendants' BatchNorm follows the batches; ``"frozen"``) and
    ``label_weight`` (cross-entropy with the batch's labels; ``None``: 1 for a
    classifier, else 0) tune it.

    Both stages also save mid-epoch, after the step that ends ``checkpoint_seconds``
    seconds (default 60: a kill loses at most about a minute of work, and saving even a
    large set of descendants every minute costs about a percent of the time) or
    ``checkpoint_steps`` steps (default ``None``: by time only) since the last save. A
    resumed run skips the batches already done in its epoch (it loads them without
    training on them) with the random generators restored, so it ends with exactly the
    weights and history of an uninterrupted run.

    Under ``torchrun`` (a ``torch.distributed`` process group of several ranks, created
    with legodnn's timeout when the script did not make one; see
    :mod:`~legodnn.offline.distributed`) both stages are data-parallel unless
    ``data_parallel=False``: each rank trains on its shard of the loaders (their batch
    size is per rank), gradients are averaged before every optimizer step, held-out
    losses are reduced, and rank 0 alone writes the checkpoints and the store while the
    others wait. Every rank ends with the same weights and returns the same history.

    ``parallel="descendants"`` splits the block stage by descendants instead (for many
    descendants and few, large batches, where halving the batch per rank costs more than
    it saves; no gradient all-reduce): every rank reads every batch of the loaders (their
    batch size is the step's, as for one process) and runs the teacher on it, and trains
    its share of the descendants, shared out by FLOPs (:func:`~legodnn.offline.distributed.balanced_split`).
    Rank 0's random generators are given to every rank at the start of each epoch, so
    all read the batches one process would. At every checkpoint rank 0 gathers every
    rank's descendants (weights, optimizer states) into the one checkpoint and, at the
    end, into the one store; its mid-epoch position counts whole batches, so it resumes
    with any number of descendant-parallel ranks or in one process. The composition stage
    after it stays data-parallel, over every batch split among the ranks (the samples per
    step of one process). The result is one process's on the same data, within rounding.

    ``sync_batchnorm=True`` (default ``False``): with several data-parallel ranks, the
    descendants' BatchNorm in training mode (block distillation; the composition stage
    with ``batchnorm="train"``) normalises with the statistics of every rank's samples
    together, as one process over the whole batch does, instead of its own shard's
    (:mod:`~legodnn.offline.sync_batchnorm`; it costs two small all-reduces per layer and
    pass). Nothing changes with one process.

    The fast path (:mod:`~legodnn.offline.precision`), for both stages: ``amp``
    (``None``: fp32, the default; ``"bf16"``; ``"fp16"``, CUDA only, with loss scaling)
    runs the teacher's and the descendants' forwards under autocast, with losses,
    optimizer steps and weights in fp32; ``channels_last=True`` (default ``False``) holds
    the teacher and the descendants, and the batches' images, in NHWC layout while
    training. With both off the results are the same, bit for bit, as without them. On a
    CUDA device the loaders legodnn builds (held-out splits, shards) pin their memory.

    Args:
        teacher_model: the trained model the blocks were extracted from.
        block_manager: the block manager of that model.
        model_manager: runs the teacher to capture every block's input and output.
        compressed_blocks_dir: the store ``extract_all_blocks`` wrote.
        trained_blocks_dir: the retrained store to write (and resume from).
        max_epoch: epochs of block distillation.
        train_loader: the training data.
        val_loader: held-out data that picks the best epoch (default: a split of
            ``train_loader``).
        device: where training runs.
        optimizer: a factory ``params -> torch.optim.Optimizer`` per descendant
            (default :func:`default_optimizer`, Adam at 1e-3).
        loss_fn: the block distillation loss (default: mean squared error).
        verbose: progress bars and per-epoch lines.
        composition_epochs: epochs of composition-aware retraining (``None``:
            automatic; ``0``: off).
        composition_lr: its learning rate.
        composition_samples: random compositions per step besides the fixed ones.
        temperature: of the logit distillation.
        batchnorm: ``"train"`` or ``"frozen"``, the descendants' BatchNorm in that stage.
        label_weight: weight of the labels' cross-entropy (``None``: 1 for a classifier).
        seed: seeds the sharding of the loaders and the composition sampling.
        overwrite: replace a store of another model at ``trained_blocks_dir``.
        checkpoint_seconds: save mid-epoch after this many seconds (``None``: never by time).
        checkpoint_steps: save mid-epoch after this many steps (``None``: never by steps).
        data_parallel: shard the loaders over the ranks of a process group.
        parallel: ``"data"`` (the default) or ``"descendants"``: how several ranks share
            the block stage.
        sync_batchnorm: BatchNorm statistics over every rank's shard in data-parallel
            training.
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast for the forwards.
        channels_last: NHWC layout while training.
    """

    def __init__(
        self,
        teacher_model: nn.Module,
        block_manager: AutoBlockManager,
        model_manager: Any,
        compressed_blocks_dir: str,
        trained_blocks_dir: str,
        max_epoch: int,
        train_loader: Iterable[Any],
        val_loader: Optional[Iterable[Any]] = None,
        device: str = "cpu",
        optimizer: Optional[OptimizerFactory] = None,
        loss_fn: Optional[LossFn] = None,
        verbose: bool = True,
        *,
        composition_epochs: Optional[int] = None,
        composition_lr: float = 0.01,
        composition_samples: int = 1,
        composition_every_level: bool = True,
        temperature: float = 2.0,
        batchnorm: str = "train",
        label_weight: Optional[float] = None,
        seed: int = 0,
        overwrite: bool = False,
        checkpoint_seconds: Optional[float] = 60.0,
        checkpoint_steps: Optional[int] = None,
        data_parallel: bool = True,
        amp: Optional[str] = None,
        channels_last: bool = False,
        parallel: str = "data",
        sync_batchnorm: bool = False,
    ) -> None:
        self.parallel = check_parallel(parallel)
        self.sync_batchnorm = check_bool("sync_batchnorm", sync_batchnorm,
                                         "pass sync_batchnorm=True to normalise with every rank's samples together")
        if self.parallel == "descendants" and not data_parallel:
            raise InvalidArgumentError("parallel='descendants' needs data_parallel=True: with data_parallel=False "
                                       "every rank trains alone and there is nothing to share out")
        max_epoch = check_int("max_epoch", max_epoch, minimum=1, hint="pass a whole number of epochs, e.g. max_epoch=3")
        composition_epochs = check_int(
            "composition_epochs", composition_epochs, minimum=0, allow_none=True,
            hint="pass None (automatic), 0 (block distillation only) or a whole number of epochs")
        device = check_device("device", device)
        self.precision = resolve_precision(amp, channels_last, device)
        self.checkpoint_seconds, self.checkpoint_steps = check_checkpoint_options(checkpoint_seconds, checkpoint_steps)
        warn_if_ignored_teacher("teacher_model", teacher_model, block_manager)
        self.teacher = teacher_model
        self.block_manager = block_manager
        self.model_manager = model_manager
        self.store = block_manager.open_store(compressed_blocks_dir)
        self.trained_dir = claim_path(trained_blocks_dir, self.store.fingerprint, overwrite, "trained_blocks_dir")
        self.max_epoch = int(max_epoch)
        self.ranks = current_ranks(data_parallel, device)
        # descendant-parallel only with several ranks: alone, "descendants" is the default path
        self._by_descendants = self.parallel == "descendants" and self.ranks.distributed
        pin = torch.device(device).type == "cuda"
        if val_loader is None:  # the same split on every rank, then sharded
            train_loader, val_loader = (pin_memory(loader, device) for loader in split_holdout(train_loader))
        if self._by_descendants:  # every rank reads every batch; the composition stage splits each batch
            self.train_loader, self.val_loader = train_loader, val_loader
            stage_loaders = (SplitBatches(train_loader, self.ranks.rank, self.ranks.world_size, train=True),
                             SplitBatches(val_loader, self.ranks.rank, self.ranks.world_size, train=False))
        else:
            self.train_loader = shard_loader(train_loader, self.ranks, train=True, seed=seed, pin_memory=pin)
            self.val_loader = shard_loader(val_loader, self.ranks, train=False, pin_memory=pin)
            stage_loaders = (self.train_loader, self.val_loader)
        self._stage_loaders: Tuple[Iterable[Any], Iterable[Any]] = stage_loaders
        self.device = device
        self.optimizer_factory = optimizer or default_optimizer
        self.loss_fn = loss_fn or F.mse_loss
        verbose = self.verbose = verbose and self.ranks.is_main  # one progress bar, rank 0's
        self.composition_epochs = composition_epochs
        self._composition_options = dict(lr=composition_lr, num_random=composition_samples,
                                         every_level=composition_every_level, temperature=temperature,
                                         batchnorm=batchnorm, label_weight=label_weight, seed=seed, verbose=verbose,
                                         checkpoint_seconds=self.checkpoint_seconds,
                                         checkpoint_steps=self.checkpoint_steps, data_parallel=data_parallel,
                                         amp=self.precision.amp, channels_last=self.precision.channels_last,
                                         sync_batchnorm=self.sync_batchnorm)
        self._checkpoints = CheckpointFolder(self._state_dir, self.ranks, replicated_data=self._by_descendants)
        self._owned: List[Key] = []  # the descendants this rank trains: all but under parallel="descendants"
        CompositionStage(block_manager, model_manager, 1, *self._stage_loaders,
                         self._state_dir / "composition",
                         device, **self._composition_options)  # checks the options now, not after the block epochs
        self.composition: Optional[CompositionStage] = None
        self.composition_history: Optional[CompositionHistory] = None

    def _composition_stage(self) -> Optional[CompositionStage]:
        """The composition-aware stage to run after the block epochs, or ``None``.

        ``composition_epochs=None`` runs it for classifiers (the teacher's output on the
        first batch is class scores for the batch's labels) with two thirds of
        ``max_epoch`` epochs (a composition epoch costs several block epochs: 3.7x on the
        CIFAR-10 benchmark, docs/accuracy.md, where 2 epochs after 8 trail 4 by 0.8 point
        with every block at 0.8); other
        tasks (detections, masks) need their own distillation loss and run it only when
        asked, with ``composition_epochs=N``. Several ranks follow rank 0's decision.
        """
        epochs = self.composition_epochs
        if epochs is None:
            batch = next(iter(self.train_loader), None)
            if batch is not None:
                out = self.model_manager.forward_to_gen_mid_data(self.block_manager.teacher, batch, self.device)
                epochs = max(1, (2 * self.max_epoch) // 3) if _class_labels(out, batch) is not None else 0
            epochs = self.ranks.broadcast(epochs, "deciding on the composition stage")
        if not epochs:
            return None
        return CompositionStage(self.block_manager, self.model_manager, epochs, *self._stage_loaders,
                                self._state_dir / "composition", self.device, restart_stale=True,
                                **self._composition_options)

    # -- state ------------------------------------------------------------------
    @property
    def _state_dir(self) -> Path:
        return self.trained_dir / "training"

    def _file(self, key: Key, kind: str) -> Path:
        return self._state_dir / f"{key[0]}_s{sparsity_tag(key[1])}.{kind}"

    def _keys(self) -> List[Key]:
        return [(b, s) for b in self.block_manager.block_names for s in self.block_manager.block_sparsity if s > 0]

    def _share(self, keys: List[Key]) -> List[Key]:
        """The descendants this rank trains: every one, or under ``parallel="descendants"``
        its share, balanced by the FLOPs the store records (a descendant's forward and
        backward cost about in proportion; its parameter count where FLOPs are 0), the
        same split on every rank."""
        if not self._by_descendants:
            return list(keys)
        costs = []
        for b, s in keys:
            spec = self.store.descendant(b, s)
            costs.append(float(spec.flops or spec.params or 1))
        shares = balanced_split(costs, self.ranks.world_size)
        loads = [sum(costs[i] for i in share) for share in shares]
        logger.info("descendant-parallel: rank %d trains %d of %d descendants (%.3g of %.3g FLOPs)", self.ranks.rank,
                    len(shares[self.ranks.rank]), len(keys), loads[self.ranks.rank], sum(loads))
        return [keys[i] for i in shares[self.ranks.rank]]

    def _load_state(self, students: Dict[Key, nn.Module], optims: Dict[Key, torch.optim.Optimizer]
                    ) -> Dict[Key, Dict[str, torch.Tensor]]:
        """Load the last checkpoint into ``students`` and ``optims``; returns the best weights so far.

        Sets ``self._state`` (what ``state.json`` holds; fresh without a checkpoint) and
        ``self._rng`` (the generators' states the checkpoint recorded; the global ones
        are set to its "now", where an uninterrupted run would have them).
        """
        fresh = {"epochs_done": 0, "position": None, "history": {}, "best_val": {}, "source": self.store.fingerprint}
        state = self._checkpoints.read_state()
        self._rng: Optional[Dict[str, Any]] = None
        self._legacy = False
        if state is None:
            self._state = fresh
            return {key: {k: v.detach().clone() for k, v in s.state_dict().items()} for key, s in students.items()}
        if state.get("source") != fresh["source"] or state.get("compressed_sha") != self._compressed_sha():
            raise LegoDNNError(
                f"{self._state_dir} holds training state for other blocks; delete it (or choose "
                "another trained_blocks_dir) to start over"
            )
        if "files" in state:
            checkpoint = self._checkpoints.load(state)
            last, best = _unflatten(checkpoint.last, students), _unflatten(checkpoint.best, students)
            optim_states, self._rng = checkpoint.optim, checkpoint.rng
        else:
            last, best, optim_states = self._legacy_files(students)
        for key, student in students.items():
            student.load_state_dict(last[key])
            optims[key].load_state_dict(optim_states[_key_name(key)])
        if self._rng is not None:
            set_rng_state(self._rng["now"], self.train_loader)
        self._state = {**fresh, **state}
        restore_precision(self._state, self.precision, self._scaler, "block training")
        position = self._state["position"]
        logger.info("resuming block training after epoch %d%s", state["epochs_done"],
                    f" and {position['step']} steps" if position else "")
        return best

    def _legacy_files(self, students: Dict[Key, nn.Module]) -> Tuple[Dict[Key, Any], Dict[Key, Any], Dict[str, Any]]:
        """State written before mid-epoch checkpoints: one file per descendant and kind, at an epoch's end.

        Read once; the first new checkpoint removes them (:meth:`_save_state`).
        """
        from safetensors.torch import load_file

        self._legacy = True
        last = {key: load_file(str(self._file(key, "last.safetensors"))) for key in students}
        best = {key: load_file(str(self._file(key, "best.safetensors"))) for key in students}
        optim = {_key_name(key): torch.load(self._file(key, "optim.pt"), weights_only=True) for key in students}
        return last, best, optim

    def _compressed_sha(self) -> str:
        return self.store.weights_digest

    def _save_state(self, students: Dict[Key, nn.Module], optims: Dict[Key, torch.optim.Optimizer],
                    epoch_start_rng: Optional[Dict[str, Any]] = None) -> None:
        """A checkpoint: the live weights, the optimizer states, ``self._state`` (epochs done,
        history, position within the epoch) and the best weights when they changed since
        the last one. ``epoch_start_rng``: the generators at the start of the epoch, for a
        mid-epoch checkpoint."""
        self._state["compressed_sha"] = self._compressed_sha()
        record_precision(self._state, self.precision, self._scaler)
        if self._by_descendants:
            last, best, optim = self._gather_descendants(students, optims)
        else:
            best = None if self._best_saved else _flatten(self._best)
            last, optim = _flatten(students), {_key_name(key): o.state_dict() for key, o in optims.items()}
        self._checkpoints.save(self._state, last, best, optim, epoch_start_rng, self.train_loader)
        self._best_saved = True
        if self._legacy and self.ranks.is_main:
            for key in students:
                for kind in ("last.safetensors", "best.safetensors", "optim.pt"):
                    self._file(key, kind).unlink(missing_ok=True)
            self._legacy = False
        self._clock.restart()

    def _gather_descendants(self, students: Dict[Key, nn.Module], optims: Dict[Key, torch.optim.Optimizer]
                            ) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]], Dict[str, Any]]:
        """Under ``parallel="descendants"``: every rank's descendants (live weights, optimizer
        states and, when they changed, best weights) gathered on rank 0, in one process's
        order, for one checkpoint; rank 0's best weights become complete. Other ranks get
        empty parts (rank 0 alone writes)."""
        part = {"last": {k: _cpu(students[k].state_dict()) for k in self._owned},
                "optim": {_key_name(k): _cpu(optims[k].state_dict()) for k in self._owned},
                "best": None if self._best_saved else {k: _cpu(self._best[k]) for k in self._owned}}
        parts = self.ranks.gather(part, "gathering every rank's descendants for a checkpoint")
        if parts is None:
            return {}, None if self._best_saved else {}, {}
        last: Dict[Key, Dict[str, torch.Tensor]] = {}
        optim: Dict[str, Any] = {}
        for p in parts:
            last.update(p["last"])
            optim.update(p["optim"])
            if p["best"] is not None:
                self._best.update(p["best"])
        best = None if self._best_saved else _flatten({k: self._best[k] for k in students})
        return (_flatten({k: last[k] for k in students}), best,
                {_key_name(k): optim[_key_name(k)] for k in students})

    def _share_best(self, best: Dict[Key, Dict[str, torch.Tensor]]) -> None:
        """Under ``parallel="descendants"``: rank 0's best weights (complete since the last
        checkpoint) on every rank, for the composition stage and so that every rank ends
        with the same weights."""
        mine = {k: _cpu(v) for k, v in best.items()} if self.ranks.is_main else None
        best.update(self.ranks.broadcast(mine, "sending every descendant's best weights to every rank"))

    # -- training ---------------------------------------------------------------
    def _capture(self, batch: Any) -> Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]]:
        with self.precision.autocast():
            return capture_block_io(self.block_manager, self.model_manager, self.precision.batch(batch), self.device)

    def _block_loss(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The descendant's forward (under autocast with ``amp``) and its loss against the teacher
        block's output, in fp32."""
        with self.precision.autocast():
            out = student(x)
        return self.loss_fn(self.precision.fp32(out), self.precision.fp32(y))

    def train_all_blocks(self) -> Dict[str, Dict[str, List[float]]]:
        """Train every descendant for ``max_epoch`` epochs and write the trained blocks directory.

        Returns the loss history per descendant ("block_3@0.6": {"train": [...], "val": [...]}).
        """
        bm = self.block_manager
        for name, loader in (("train_loader", self.train_loader), ("val_loader", self.val_loader)):
            check_first_batch(name, loader, self.model_manager, bm.teacher, bm.model_input_size, self.device)
        if self.ranks.is_main:
            mark_work_dir(self.trained_dir)
        students = {key: bm.load_descendant(self.store, *key).to(self.device) for key in self._keys()}
        self._owned = self._share(list(students))
        # BatchNorm over every rank's shard (data-parallel only: a descendant-parallel rank sees whole batches)
        self._sync_bn = self.sync_batchnorm and not self._by_descendants and convert_batchnorm(
            students.values(), self.ranks) > 0
        optims = {key: self.optimizer_factory(s.parameters()) for key, s in students.items()}
        self._clock = CheckpointClock(self.checkpoint_seconds, self.checkpoint_steps)
        self._scaler = LossScaler(self.precision)
        best = self._best = self._load_state(students, optims)
        state = self._state
        self._best_saved = "checkpoint" in state  # the checkpoint just read holds them
        with self.precision.layout([bm.teacher, *students.values()]):
            for epoch in range(state["epochs_done"], self.max_epoch):
                train_loss = self._epoch(students, optims, epoch)
                val_loss = self._validate(students)
                for key in students:
                    name = f"{key[0]}@{key[1]:g}"
                    hist = state["history"].setdefault(name, {"train": [], "val": []})
                    hist["train"].append(train_loss[key])
                    hist["val"].append(val_loss[key])
                    if val_loss[key] < state["best_val"].get(name, math.inf):
                        state["best_val"][name] = val_loss[key]
                        if key in self._owned:  # another rank's descendant: its rank keeps the weights
                            best[key] = {k: v.detach().clone() for k, v in students[key].state_dict().items()}
                        self._best_saved = False
                state["epochs_done"] = epoch + 1
                self._save_state(students, optims)
                if self.verbose:
                    mean_val = sum(val_loss.values()) / max(1, len(val_loss))
                    tqdm.write(f"epoch {epoch + 1}/{self.max_epoch}: mean held-out block MSE {mean_val:.4g}")
        if self._by_descendants:
            self._share_best(best)
        extra: Dict[str, Any] = {}
        self.composition = self._composition_stage()
        if self.composition is not None:
            for key, student in students.items():
                student.load_state_dict(best[key])
            best, self.composition_history = self.composition.run(students)
            extra = {"composition_epochs": self.composition.max_epoch,
                     "composition_best_epoch": self.composition_history.best_epoch}
        self._write_store(best, state, extra)
        return state["history"]

    def _epoch(self, students: Dict[Key, nn.Module], optims: Dict[Key, torch.optim.Optimizer], epoch: int) -> Dict[Key, float]:
        """One epoch of distillation, saving a checkpoint whenever the clock says so; an epoch
        a mid-epoch checkpoint stopped in continues after the batches it had done."""
        state = self._state
        position = state["position"] if epoch == state["epochs_done"] else None
        names = {key: _key_name(key) for key in students}
        done = position["step"] if position else 0
        sums = {key: float(position["sums"][names[key]]) if position else 0.0 for key in students}
        counts = {key: int(position["counts"][names[key]]) if position else 0 for key in students}
        if position and not self.ranks.is_main:  # the checkpoint's sums are over every rank: rank 0 carries them
            sums, counts = dict.fromkeys(students, 0.0), dict.fromkeys(students, 0)
        owned = {key: students[key] for key in self._owned}
        for s in owned.values():
            s.train()
        start_epoch(self.train_loader, epoch)
        if self._by_descendants and not done:  # every rank reads the batches one process would: rank 0's
            share_rng_state(self.ranks, self.train_loader)
        epoch_start_rng, batches = resume_epoch(self.train_loader, done, self._rng)
        total = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        bar = tqdm(batches, desc=f"block training {epoch + 1}/{self.max_epoch}", initial=done, total=total,
                   disable=not self.verbose, leave=False)
        n_batches = done
        modules = list(owned.values())
        # data-parallel: gradients averaged over the ranks; descendant-parallel: each rank's own
        gradients = Ranks() if self._by_descendants else self.ranks
        for batch in bar:
            n_batches += 1
            captured = self._capture(batch) if owned else {}  # a rank with no descendants (more ranks than them)
            # a block called several times per forward (a shared head) gives several steps, one per call;
            # every data-parallel rank takes as many as the rank with the most, so the gradient all-reduces pair up
            calls = max((len(c) for c in captured.values()), default=0)
            if not self._by_descendants:
                calls = self.ranks.max_int(calls, "agreeing on the steps of a batch")
            present = self._present(captured, calls, owned) if self._sync_bn else None
            for call in range(calls):
                for key, student in owned.items():
                    optims[key].zero_grad(set_to_none=True)
                    pairs = captured[key[0]]
                    if call >= len(pairs) or pairs[call][0].numel() == 0:  # a head that saw nothing (no boxes)
                        if present is not None and present[call, key]:
                            self._join_empty(student, pairs)
                        continue
                    x, y = pairs[call]
                    loss = self._block_loss(student, x, y)
                    value = finite_loss(loss, f"block {key[0]} at sparsity {key[1]}", epoch, "optimizer=...",
                                        self._state_dir)
                    self._scaler.scale(loss).backward()
                    sums[key] += value
                    counts[key] += 1
                # descendants are independent: stepping each after all backward passes is stepping each after its own
                for key, has_gradient in zip(owned, gradients.average_gradients(modules)):
                    if has_gradient:
                        self._scaler.step(optims[key])
                self._scaler.update()
            if self.ranks.any(self._clock.step_done(), "agreeing on a checkpoint"):
                sums, counts = self._fold(sums, counts)
                state["position"] = {"step": n_batches, "sums": {names[k]: v for k, v in sums.items()},
                                     "counts": {names[k]: v for k, v in counts.items()}}
                self._save_state(students, optims, epoch_start_rng)
                if not self.ranks.is_main:
                    sums, counts = dict.fromkeys(students, 0.0), dict.fromkeys(students, 0)
        if n_batches == 0:
            raise LegoDNNError("train_loader yielded no batches; block retraining needs training data")
        state["position"] = None
        sums, counts = self._fold(sums, counts)
        return {key: sums[key] / max(1, counts[key]) for key in students}

    def _present(self, captured: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]], calls: int,
                 owned: Dict[Key, nn.Module]) -> Dict[Tuple[int, Key], bool]:
        """With ``sync_batchnorm``: per (call, descendant), whether any rank has samples for
        it. A rank without any must still run the descendant (:meth:`_join_empty`), since
        the BatchNorm all-reduces of the ranks that do need a partner."""
        cells = [(call, key) for call in range(calls) for key in owned]
        mine = [float(call < len(captured[key[0]]) and captured[key[0]][call][0].numel() > 0) for call, key in cells]
        total = self.ranks.sum_floats(mine, "agreeing on which blocks saw data")
        return {cell: n > 0 for cell, n in zip(cells, total)}

    def _join_empty(self, student: nn.Module, pairs: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take part in the BatchNorm all-reduces of a step another rank trains and this one
        has no samples for: a forward and backward on an empty batch (it adds nothing to
        the statistics or the gradients), its gradients then dropped, so that this rank
        counts as having none, as in a step without ``sync_batchnorm``."""
        with self.precision.autocast():
            out = student(pairs[0][0][:0])
        (self.precision.fp32(out).sum() * 0.0).backward()
        for p in student.parameters():
            p.grad = None

    def _fold(self, sums: Dict[Key, float], counts: Dict[Key, int]) -> Tuple[Dict[Key, float], Dict[Key, int]]:
        """Loss sums and step counts over every rank (unchanged with one process)."""
        keys = list(sums)
        total = self.ranks.sum_floats([sums[k] for k in keys] + [counts[k] for k in keys], "summing the losses")
        return dict(zip(keys, total[:len(keys)])), {k: int(c) for k, c in zip(keys, total[len(keys):])}

    @torch.no_grad()
    def _validate(self, students: Dict[Key, nn.Module]) -> Dict[Key, float]:
        sums = {key: 0.0 for key in students}
        counts = {key: 0 for key in students}
        owned = {key: students[key] for key in self._owned}  # every rank scores its own; the sums are folded
        for s in owned.values():
            s.eval()
        for batch in self.val_loader:
            if not owned:
                continue
            captured = self._capture(batch)
            for key, student in owned.items():
                for x, y in captured[key[0]]:
                    if x.numel() == 0:
                        continue
                    sums[key] += float(self._block_loss(student, x, y)) * len(x)
                    counts[key] += len(x)
        sums, counts = self._fold(sums, counts)  # every rank's share of the held-out data
        if not any(counts.values()):
            raise LegoDNNError("the held-out loader yielded no samples; give val_loader or more training data")
        return {key: sums[key] / max(1, counts[key]) for key in students}

    def _write_store(self, best: Dict[Key, Dict[str, torch.Tensor]], state: Dict[str, Any], extra: Dict[str, Any]) -> None:
        """The trained blocks directory: the compressed store's files with trained weights,
        written by rank 0; the others wait until it is there."""
        if self.ranks.is_main:
            write_text_atomic(self._state_dir / "history.json", json.dumps(state["history"], indent=1))
            write_trained_store(self.store, self.trained_dir, best, {
                "epochs": state["epochs_done"],
                "best_val_loss": state["best_val"],
                "loss": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
                **extra,
            })
        self.ranks.barrier("waiting for rank 0 to write the trained store")
