"""The pieces of composition-aware retraining: a model whose blocks switch, a sampler, a loss.

Block-level distillation trains each descendant on the teacher's exact block inputs.
On the device a descendant sees the outputs of *pruned* neighbours instead, and the
small errors of each block compound: at deep pruning the composed model is far worse
than the sum of its blocks' drops. Training whole compositions end to end against the
teacher's output fixes that, as long as the sampled compositions cover the ones the
optimizer will pick; the sandwich rule of slimmable networks and Once-for-All does so
by always including the extremes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..errors import ArgumentTypeError

__all__ = ["SandwichSampler", "SwitchableBlock", "SwitchableModel", "distillation_loss"]

Config = Tuple[float, ...]


class SwitchableBlock(nn.Module):
    """One block slot that runs one of its options: the teacher's block at sparsity 0,
    a descendant above. ``active`` picks the option by sparsity."""

    def __init__(self, options: Mapping[float, nn.Module]) -> None:
        super().__init__()
        self.sparsities: Tuple[float, ...] = tuple(sorted(options))
        self.options = nn.ModuleList(options[s] for s in self.sparsities)
        self.active = 0

    def select(self, sparsity: float) -> None:
        self.active = self.sparsities.index(sparsity)

    def forward(self, x: torch.Tensor) -> Any:
        return self.options[self.active](x)


class SwitchableModel:
    """The teacher's frame with every block a :class:`SwitchableBlock`.

    One model serves every composition: :meth:`select` sets the sparsity of each block in
    place, so sampling a new composition costs nothing. The frame and the sparsity-0
    options are the teacher's own modules; they are kept in eval mode and without
    gradients, so training changes only the descendants.
    """

    def __init__(self, block_manager: AutoBlockManager, descendants: Mapping[Tuple[str, float], nn.Module]) -> None:
        self.block_names = list(block_manager.block_names)
        self.slots: Dict[str, SwitchableBlock] = {}
        for name in self.block_names:
            options = {0.0: block_manager.get_block(name)}
            options.update({s: m for (b, s), m in descendants.items() if b == name})
            self.slots[name] = SwitchableBlock(options)
        self.model = block_manager.compose(dict(self.slots))
        self.descendants = dict(descendants)
        trainable = {id(p) for m in self.descendants.values() for p in m.parameters()}
        self._frozen = [p for p in self.model.parameters() if id(p) not in trainable]

    def select(self, config: Sequence[float]) -> None:
        for name, s in zip(self.block_names, config):
            self.slots[name].select(float(s))

    def train_descendants(self, batchnorm: str = "frozen") -> None:
        """Frame and teacher blocks in eval mode and frozen; descendants trainable.

        ``batchnorm="frozen"`` keeps the descendants' BatchNorm layers on their running
        statistics too, so training optimizes exactly the model that is evaluated;
        ``"train"`` lets them follow batch statistics (and update their running ones).
        """
        self.model.eval()
        for p in self._frozen:
            p.requires_grad_(False)
        for m in self.descendants.values():
            m.train(batchnorm == "train")
            for p in m.parameters():
                p.requires_grad_(True)

    def restore(self) -> None:
        """Gradients back on for the teacher's own parameters (the caller's model)."""
        for p in self._frozen:
            p.requires_grad_(True)
        self.model.eval()


@dataclass(frozen=True)
class SandwichSampler:
    """Compositions to train on at one step: the smallest, one whole level, random ones.

    Per step: every block at the highest sparsity (the model a tight budget picks, where
    errors compound most), every block at one level (cycling over the levels from step
    to step; with ``every_level`` each level at every step), and ``num_random``
    compositions drawn uniformly per block (sparsity 0 included, so descendants also
    learn to sit beside unpruned teacher blocks). The draw depends only on
    ``(seed, epoch, step)``, so a resumed run samples what an uninterrupted one would.
    """

    sparsities: Tuple[float, ...]
    num_blocks: int
    num_random: int = 2
    seed: int = 0
    every_level: bool = False

    @property
    def levels(self) -> Tuple[float, ...]:
        return tuple(s for s in sorted(self.sparsities) if s > 0)

    def smallest(self) -> Config:
        return (max(self.sparsities),) * self.num_blocks

    def sample(self, epoch: int, step: int) -> List[Config]:
        rng = random.Random(f"{self.seed}:{epoch}:{step}")
        levels = self.levels
        out: List[Config] = [self.smallest()]
        for level in (levels if self.every_level else levels[step % len(levels):][:1]):
            if level != max(levels):
                out.append((level,) * self.num_blocks)
        # a step where the cycled level is the smallest draws one more random composition instead
        wanted = (len(levels) if self.every_level else 2) + self.num_random
        while len(out) < wanted:
            config = tuple(rng.choice(self.sparsities) for _ in range(self.num_blocks))
            if any(s > 0 for s in config):
                out.append(config)
        return out

    def validation_set(self, num_random: int = 4) -> List[Config]:
        """Fixed compositions that pick the best epoch: every level and ``num_random`` random ones."""
        rng = random.Random(f"{self.seed}:validation")
        out: List[Config] = [(s,) * self.num_blocks for s in self.levels]
        # a small model has few distinct compositions (2 blocks at 0 and 0.5: 3 in all): ask for no more
        distinct = len(set(self.sparsities)) ** self.num_blocks - 1
        while len(out) < min(len(self.levels) + num_random, distinct):
            config = tuple(rng.choice(self.sparsities) for _ in range(self.num_blocks))
            if any(s > 0 for s in config) and config not in out:
                out.append(config)
        return out


def distillation_loss(student: Any, teacher: Any, temperature: float = 2.0) -> torch.Tensor:
    """How far a composition's output is from the teacher's.

    Class scores (a 2-D tensor) are compared as softened distributions: KL divergence at
    ``temperature``, scaled by its square so the gradient size does not depend on it
    (Hinton et al., 2015). Any other output (feature maps, dicts or tuples of tensors, as
    detectors return) is compared by mean squared error over its floating-point tensors.
    """
    if isinstance(student, torch.Tensor) and student.dim() == 2 and student.is_floating_point():
        t = temperature
        return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                        log_target=True) * t * t
    pairs = list(_tensor_pairs(student, teacher))
    if not pairs:
        raise ArgumentTypeError(f"cannot compare model outputs of type {type(student).__name__}: no floating-point tensors")
    return sum(F.mse_loss(s, t) for s, t in pairs) / len(pairs)


def _tensor_pairs(student: Any, teacher: Any) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(student, torch.Tensor):
        return [(student, teacher)] if student.is_floating_point() else []
    if isinstance(student, Mapping):
        return [p for k in student for p in _tensor_pairs(student[k], teacher[k])]
    if isinstance(student, (list, tuple)):
        return [p for s, t in zip(student, teacher) for p in _tensor_pairs(s, t)]
    return []
