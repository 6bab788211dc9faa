"""BlockRetrainer: block-level distillation of every descendant from the teacher's activations.

Per batch, one teacher forward captures every block's input and output; every
descendant of every block then takes one optimizer step to map the same input to the
same output. Memory holds one batch of activations, never the data set's. The state
after each epoch is on disk, so an interrupted run resumes where it stopped; the
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

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..blockmanager.atomic import remove_stale_temps, save_torch_atomic
from ..blockmanager.store import atomic_write_text, claim_path, mark_work_dir, sparsity_tag, write_file_atomic
from ..errors import LegoDNNError
from ..validation import check_device, check_first_batch, check_int
from .capture import capture_block_io
from .guards import finite_loss
from .composition_retrainer import CompositionHistory, CompositionStage, _class_labels
from .holdout import split_holdout
from .trained_store import write_trained_store

__all__ = ["BlockRetrainer", "default_optimizer"]

logger = logging.getLogger(__name__)

Key = Tuple[str, float]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    0), ``composition_samples`` (random compositions per step besides the smallest and
    one whole level), ``temperature`` (of the logit distillation), ``batchnorm``
    (``"train"``: descendants' BatchNorm follows the batches; ``"frozen"``) and
    ``label_weight`` (cross-entropy with the batch's labels; ``None``: 1 for a
    classifier, else 0) tune it.
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
        composition_samples: int = 2,
        temperature: float = 2.0,
        batchnorm: str = "train",
        label_weight: Optional[float] = None,
        seed: int = 0,
        overwrite: bool = False,
    ) -> None:
        max_epoch = check_int("max_epoch", max_epoch, minimum=1, hint="pass a whole number of epochs, e.g. max_epoch=3")
        composition_epochs = check_int(
            "composition_epochs", composition_epochs, minimum=0, allow_none=True,
            hint="pass None (automatic), 0 (block distillation only) or a whole number of epochs")
        device = check_device("device", device)
        self.teacher = teacher_model
        self.block_manager = block_manager
        self.model_manager = model_manager
        self.store = block_manager.open_store(compressed_blocks_dir)
        self.trained_dir = claim_path(trained_blocks_dir, self.store.fingerprint, overwrite, "trained_blocks_dir")
        self.max_epoch = int(max_epoch)
        if val_loader is None:
            train_loader, val_loader = split_holdout(train_loader)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.device = device
        self.optimizer_factory = optimizer or default_optimizer
        self.loss_fn = loss_fn or F.mse_loss
        self.verbose = verbose
        self.composition_epochs = composition_epochs
        self._composition_options = dict(lr=composition_lr, num_random=composition_samples, temperature=temperature,
                                         batchnorm=batchnorm, label_weight=label_weight, seed=seed, verbose=verbose)
        CompositionStage(block_manager, model_manager, 1, train_loader, val_loader, self._state_dir / "composition",
                         device, **self._composition_options)  # checks the options now, not after the block epochs
        self.composition: Optional[CompositionStage] = None
        self.composition_history: Optional[CompositionHistory] = None

    def _composition_stage(self) -> Optional[CompositionStage]:
        """The composition-aware stage to run after the block epochs, or ``None``.

        ``composition_epochs=None`` runs it for classifiers (the teacher's output on the
        first batch is class scores for the batch's labels) with two thirds of
        ``max_epoch`` epochs, which costs about as much as the block epochs do; other
        tasks (detections, masks) need their own distillation loss and run it only when
        asked, with ``composition_epochs=N``.
        """
        epochs = self.composition_epochs
        if epochs is None:
            batch = next(iter(self.train_loader), None)
            if batch is None:
                return None
            out = self.model_manager.forward_to_gen_mid_data(self.block_manager.teacher, batch, self.device)
            epochs = max(1, (2 * self.max_epoch) // 3) if _class_labels(out, batch) is not None else 0
        if not epochs:
            return None
        return CompositionStage(self.block_manager, self.model_manager, epochs, self.train_loader, self.val_loader,
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

    def _load_state(self, students: Dict[Key, nn.Module], optims: Dict[Key, torch.optim.Optimizer]) -> Dict[str, Any]:
        path = self._state_dir / "state.json"
        remove_stale_temps(self._state_dir)  # what a killed run left half-written
        fresh = {"epochs_done": 0, "history": {}, "best_val": {}, "source": self.store.fingerprint}
        if not path.exists():
            return fresh
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("source") != fresh["source"] or state.get("compressed_sha") != self._compressed_sha():
            raise LegoDNNError(
                f"{self._state_dir} holds training state for other blocks; delete it (or choose "
                "another trained_blocks_dir) to start over"
            )
        from safetensors.torch import load_file

        for key, student in students.items():
            student.load_state_dict(load_file(str(self._file(key, "last.safetensors"))))
            optims[key].load_state_dict(torch.load(self._file(key, "optim.pt"), weights_only=True))
        logger.info("resuming block training after epoch %d", state["epochs_done"])
        return state

    def _compressed_sha(self) -> str:
        return self.store.weights_digest

    def _save_state(
        self,
        state: Dict[str, Any],
        students: Dict[Key, nn.Module],
        best: Dict[Key, Dict[str, torch.Tensor]],
        optims: Dict[Key, torch.optim.Optimizer],
    ) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        for key, student in students.items():
            write_file_atomic(self._file(key, "last.safetensors"), student.state_dict())
            write_file_atomic(self._file(key, "best.safetensors"), best[key])
            save_torch_atomic(self._file(key, "optim.pt"), optims[key].state_dict())
        state["compressed_sha"] = self._compressed_sha()
        atomic_write_text(self._state_dir / "state.json", json.dumps(state, indent=1))

    # -- training ---------------------------------------------------------------
    def _capture(self, batch: Any) -> Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]]:
        return capture_block_io(self.block_manager, self.model_manager, batch, self.device)

    def train_all_blocks(self) -> Dict[str, Dict[str, List[float]]]:
        """Train every descendant for ``max_epoch`` epochs and write the trained blocks directory.

        Returns the loss history per descendant ("block_3@0.6": {"train": [...], "val": [...]}).
        """
        bm = self.block_manager
        for name, loader in (("train_loader", self.train_loader), ("val_loader", self.val_loader)):
            check_first_batch(name, loader, self.model_manager, bm.teacher, bm.model_input_size, self.device)
        mark_work_dir(self.trained_dir)
        students = {key: bm.load_descendant(self.store, *key).to(self.device) for key in self._keys()}
        optims = {key: self.optimizer_factory(s.parameters()) for key, s in students.items()}
        state = self._load_state(students, optims)
        best: Dict[Key, Dict[str, torch.Tensor]] = {}
        for key, student in students.items():
            best_file = self._file(key, "best.safetensors")
            if state["epochs_done"] and best_file.exists():
                from safetensors.torch import load_file

                best[key] = load_file(str(best_file))
            else:
                best[key] = {k: v.detach().clone() for k, v in student.state_dict().items()}
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
                    best[key] = {k: v.detach().clone() for k, v in students[key].state_dict().items()}
            state["epochs_done"] = epoch + 1
            self._save_state(state, students, best, optims)
            if self.verbose:
                mean_val = sum(val_loss.values()) / max(1, len(val_loss))
                tqdm.write(f"epoch {epoch + 1}/{self.max_epoch}: mean held-out block MSE {mean_val:.4g}")
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
        sums = {key: 0.0 for key in students}
        counts = {key: 0 for key in students}
        for s in students.values():
            s.train()
        bar = tqdm(self.train_loader, desc=f"block training {epoch + 1}/{self.max_epoch}", disable=not self.verbose, leave=False)
        n_batches = 0
        for batch in bar:
            n_batches += 1
            captured = self._capture(batch)
            for key, student in students.items():
                for x, y in captured[key[0]]:
                    if x.numel() == 0:  # a head that saw nothing this batch (a detector with no boxes)
                        continue
                    optims[key].zero_grad(set_to_none=True)
                    loss = self.loss_fn(student(x), y)
                    value = finite_loss(loss, f"block {key[0]} at sparsity {key[1]}", epoch, "optimizer=...",
                                        self._state_dir)
                    loss.backward()
                    optims[key].step()
                    sums[key] += value
                    counts[key] += 1
        if n_batches == 0:
            raise LegoDNNError("train_loader yielded no batches; block retraining needs training data")
        return {key: sums[key] / max(1, counts[key]) for key in students}

    @torch.no_grad()
    def _validate(self, students: Dict[Key, nn.Module]) -> Dict[Key, float]:
        sums = {key: 0.0 for key in students}
        counts = {key: 0 for key in students}
        for s in students.values():
            s.eval()
        for batch in self.val_loader:
            captured = self._capture(batch)
            for key, student in students.items():
                for x, y in captured[key[0]]:
                    if x.numel() == 0:
                        continue
                    sums[key] += float(self.loss_fn(student(x), y)) * len(x)
                    counts[key] += len(x)
        if not any(counts.values()):
            raise LegoDNNError("the held-out loader yielded no samples; give val_loader or more training data")
        return {key: sums[key] / max(1, counts[key]) for key in students}

    def _write_store(self, best: Dict[Key, Dict[str, torch.Tensor]], state: Dict[str, Any], extra: Dict[str, Any]) -> None:
        """The trained blocks directory: the compressed store's files with trained weights."""
        atomic_write_text(self._state_dir / "history.json", json.dumps(state["history"], indent=1))
        write_trained_store(self.store, self.trained_dir, best, {
            "epochs": state["epochs_done"],
            "best_val_loss": state["best_val"],
            "loss": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
            **extra,
        })
