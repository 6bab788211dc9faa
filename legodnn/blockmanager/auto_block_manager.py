"""AutoBlockManager: trace a CNN, cut it into blocks, generate and store descendants."""

from __future__ import annotations

import logging
import math
import numbers
import time
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidSparsityError,
    LegoDNNError,
    NoBlocksError,
    StoreError,
    TraceError,
)
from ..validation import check_device, check_float, check_input_size, check_module
from .channels import ChannelAnalysis, analyze_channels
from .fingerprint import architecture_fingerprint
from .layers import LayerRegistry, default_layers
from .loading import load_descendant
from .manifest import BlockEntry, FileRef, PartEntry, StoreManifest
from .measure import count_bytes, count_flops, count_params
from .partition import Partition, extract_block
from .pruning import build_descendant, plan_pruning
from .regions import Region, find_candidate_regions, select_regions
from .specs import BlockSpec, DescendantSpec
from .store import FRAME_FILE, BlockStore, StoreWriter, descendant_file
from .tracing import TracedPart, dummy_runner, is_multi_input, trace_model

__all__ = ["AutoBlockManager", "LARGER_BLOCK_FACTOR", "validate_sparsities", "dummy_runner"]

logger = logging.getLogger(__name__)


def validate_sparsities(block_sparsity: Sequence[float]) -> List[float]:
    """Sorted, unique sparsities in [0, 1), with 0.0 (the original block) always first.

    A string, a bare number or an empty list is refused rather than iterated or indexed
    ("0.5" would otherwise be read as the characters '0', '.', '5'); so are bools, which
    Python counts as the numbers 0 and 1.
    """
    example = "e.g. block_sparsity=[0.0, 0.3, 0.6, 0.8]"
    if isinstance(block_sparsity, (str, bytes)) or not isinstance(block_sparsity, Sequence):
        raise InvalidSparsityError(
            f"block_sparsity must be a list of numbers, got {block_sparsity!r} ({type(block_sparsity).__name__}); "
            f"{example}"
        )
    if len(block_sparsity) == 0:
        raise InvalidSparsityError(f"block_sparsity is empty: list the sparsities of the descendants, {example}")
    wrong = [s for s in block_sparsity if isinstance(s, bool) or not isinstance(s, numbers.Real)]
    if wrong:
        raise InvalidSparsityError(f"block_sparsity must be a list of numbers, got {list(block_sparsity)!r}; {example}")
    values = [float(s) for s in block_sparsity]
    bad = [s for s in values if not (0.0 <= s < 1.0) or math.isnan(s)]
    if bad:
        raise InvalidSparsityError(
            f"sparsities must lie in [0, 1) (the fraction of filters removed), got {bad}; "
            "e.g. block_sparsity=[0.0, 0.3, 0.6, 0.8]"
        )
    values = sorted(set(values))
    if values[0] != 0.0:
        values.insert(0, 0.0)
    return values


class AutoBlockManager:
    """Finds the blocks of a model and generates their descendants.

    Blocks are the largest single-input/single-output regions of the traced graph with
    at most ``max(2, floor(total_convs * compress_layer_max_ratio))`` convolutions (and
    ``max(3, floor(total_linears * compress_layer_max_ratio))`` linear layers) and
    something to prune, chosen to cover as many parameters as possible (the original
    LegoDNN rule for block size). A module with more convs than that and no single-tensor
    cut inside (a ResNeSt bottleneck, a VoVNet OSA module) can only be pruned whole: a
    block may then hold up to :data:`LARGER_BLOCK_FACTOR` times as many convs, where it
    prunes layers that no choice of blocks within the limit can (ties go to the latter). ``block_sparsity`` lists the fraction of each block's
    internal filters every descendant removes; 0.0, the original block, is always there.
    ``model_input_size`` is the dummy input's shape, or a tuple of shapes for a model
    whose forward takes several tensors (each block still takes one; such a model is
    not stored yet, since the manifest records one input shape, unless a model manager
    makes its inputs from one shape). ``layers`` declares custom layer types (:mod:`legodnn.blockmanager.layers`); by default
    :data:`~legodnn.blockmanager.default_layers`, the registry the switcher also uses.

    Args:
        block_sparsity: the descendants' sparsities, each in [0, 1): the fraction of a
            block's internal filters removed (``[0.0, 0.3, 0.6, 0.8]``); 0.0 is added.
        model: the trained model (the teacher), traced with ``torch.fx``.
        model_manager: how to run the model (``CommonModelManager()`` for a classifier);
            ``None`` runs it on one random tensor per input shape.
        model_input_size: the dummy input's shape with its batch dim, ``(1, 3, 32, 32)``,
            or a tuple of shapes for a model with several tensor inputs.
        compress_layer_max_ratio: a block holds at most this fraction of the model's
            convolutions (at least 2; up to twice that for a module pruned only whole).
        device: where the model runs while blocks are found and measured.
        verbose: log what was traced and found.
        layers: a registry of custom layer types instead of ``default_layers``.
    """

    def __init__(
        self,
        block_sparsity: Sequence[float],
        model: nn.Module,
        model_manager: Any = None,
        model_input_size: Union[Tuple[int, ...], Tuple[Tuple[int, ...], ...]] = (1, 3, 32, 32),
        compress_layer_max_ratio: float = 0.125,
        device: str = "cpu",
        verbose: bool = True,
        *,
        layers: Optional[LayerRegistry] = None,
    ) -> None:
        self.block_sparsity = validate_sparsities(block_sparsity)
        check_module("model", model)
        model_input_size = _check_input_sizes(model_input_size)
        compress_layer_max_ratio = check_float("compress_layer_max_ratio", compress_layer_max_ratio, minimum=0.0,
                                               maximum=1.0, min_inclusive=False, hint="pass e.g. 0.125 (the default)")
        device = check_device("device", device)
        self.model = model.to(device)
        self.model_manager = model_manager
        self.model_input_size = model_input_size  # one shape, or one per model input
        self.compress_layer_max_ratio = float(compress_layer_max_ratio)
        self.device = device
        self.verbose = verbose
        if layers is not None and not isinstance(layers, LayerRegistry):
            raise ArgumentTypeError(
                f"layers must be a legodnn.blockmanager.LayerRegistry, got {type(layers).__name__}; "
                "leave it out to use legodnn.blockmanager.default_layers")
        self.layers = default_layers if layers is None else layers

        conv_modules = {id(m): m for m in self.model.modules() if self.layers.is_conv(m)}
        self.total_convs = len(conv_modules)
        self.total_conv_params = sum(count_params(m) for m in conv_modules.values())
        self.max_convs_per_block = max(2, math.floor(self.total_convs * self.compress_layer_max_ratio))
        #: the most convs of a larger block, one that prunes what no block within the limit can
        self.max_convs_larger_block = LARGER_BLOCK_FACTOR * self.max_convs_per_block
        # linear layers are limited the same way, so that a transformer's blocks stay one or two
        # layers each; at least 3, so that a three-layer MLP classifier (VGG's) stays one block
        linears = sum(1 for m in self.model.modules() if self.layers.is_prunable(m) and not self.layers.is_conv(m))
        self.max_linears_per_block = max(3, math.floor(linears * self.compress_layer_max_ratio))

        start = time.perf_counter()
        self._refuse_mostly_unfused()
        self.parts = self._trace()
        self.fingerprint = architecture_fingerprint(self.model, self.parts)
        self._analyses: Dict[str, ChannelAnalysis] = {}
        self._teacher: Optional[nn.Module] = None
        self._call_shapes: Optional[Dict[str, List[Tuple[int, ...]]]] = None
        #: modules whose output shape :meth:`compose` has checked, with the (input, output)
        #: shapes they passed for; weak, so a checked module can still be freed
        self._shapes_checked: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()
        self.partition = self._find_blocks()
        self._analyses = {s.name: self._analysis(s.name) for s in self.partition.specs}
        self._refuse_unfused_branches()
        self.find_seconds = time.perf_counter() - start
        logger.info(
            "%d blocks cover %.1f%% of conv parameters (at most %d convs per block)",
            len(self.blocks), 100 * self.coverage, self.max_convs_per_block,
        )

    # -- finding blocks ---------------------------------------------------------
    def _trace(self) -> List[TracedPart]:
        run = dummy_runner(self.model, self.model_manager, self.model_input_size, self.device)
        try:
            parts = trace_model(self.model, run, layers=self.layers)
        except TraceError:
            raise
        except Exception as exc:  # the dummy forward itself failed: wrong input size, usually
            raise LegoDNNError(
                f"running the model on a dummy input of size {self.model_input_size} failed "
                f"({type(exc).__name__}: {exc}); check model_input_size (N, C, H, W), or one such shape per "
                "input for a model whose forward takes several tensors, and the device"
            ) from exc
        if parts[0].path:
            logger.info("traced parts: %s", ", ".join(p.path for p in parts))
        return parts

    def _find_blocks(self) -> Partition:
        chosen: List[Tuple[str, Region]] = []
        for part in self.parts:
            candidates = find_candidate_regions(part.graph_module, self.max_convs_per_block, layers=self.layers,
                                                oversized_convs=self.max_convs_larger_block,
                                                max_linears=self.max_linears_per_block)
            gm = part.graph_module

            def prunable(region: Region, gm: fx.GraphModule = gm, path: str = part.path) -> bool:
                spec = _provisional_spec(path, region)
                return bool(analyze_channels(extract_block(gm, spec), self.layers).groups)

            def pruned_params(region: Region, gm: fx.GraphModule = gm, path: str = part.path) -> Optional[int]:
                block = extract_block(gm, _provisional_spec(path, region))
                analysis = analyze_channels(block, self.layers)
                return _pruned_params(block, analysis, self.layers) if analysis.groups else None

            chosen.extend((part.path, r) for r in select_regions(candidates, accept=prunable, weigh=pruned_params))
        if not chosen:
            raise NoBlocksError(
                "found no block to prune: the model needs at least one convolution or linear layer "
                "whose filters feed another layer inside a single-input/single-output region. "
                f"Traced parts: {[p.path or '<model>' for p in self.parts]}; "
                f"max convs per block: {self.max_convs_per_block} (raise compress_layer_max_ratio for larger blocks)"
            )
        return Partition.from_regions(self.parts, chosen)

    def _unfused_modules(self, outside: Optional[set] = None) -> Dict[str, int]:
        """Per type name, the conv parameters of re-parameterisable modules still in their
        training form (a fusing method and two or more convs; once fused they hold one),
        counting only convs whose id is not in ``outside`` when it is given."""
        found: Dict[str, int] = {}
        for m in self.model.modules():
            if not any(callable(getattr(m, a, None)) for a in _REPARAM_METHODS):
                continue
            convs = [c for c in m.modules() if self.layers.is_conv(c)]
            if len(convs) < 2:
                continue
            counted = [c for c in convs if outside is None or id(c) not in outside]
            if counted:
                found[type(m).__name__] = found.get(type(m).__name__, 0) + sum(count_params(c) for c in counted)
        return found

    def _unfused_error(self, names: Sequence[str], share: str) -> LegoDNNError:
        return LegoDNNError(
            f"the model's {', '.join(sorted(names))} modules are re-parameterisable multi-branch blocks in their "
            "training form: each adds its conv branches into its stage's residual stream, so " + share +
            ". Fuse them first (timm: model = timm.utils.reparameterize_model(model); other code: each block's "
            "reparameterize() or switch_to_deploy()), then build the block manager on the fused model")

    def _refuse_mostly_unfused(self) -> None:
        """Refuse at once a model whose convs are mostly in unfused re-parameterisable
        blocks: the block search would end in the refusal below after tens of seconds
        (timm mobileone_s0: 50 s among about 1,000 candidate regions)."""
        unfused = self._unfused_modules()
        if self.total_conv_params and sum(unfused.values()) > 0.5 * self.total_conv_params:
            share = 100 * sum(unfused.values()) / self.total_conv_params
            raise self._unfused_error(list(unfused), f"their {share:.0f}% of the conv parameters cannot go into "
                                                     "prunable blocks")

    def _refuse_unfused_branches(self) -> None:
        """Refuse a model whose re-parameterisable blocks are still in their training form.

        A RepVGG or MobileOne block sums a 3x3 conv, a 1x1 conv and an identity branch:
        every filter it has writes into the residual stream of its stage, so nothing can
        be pruned short of a block holding the whole stage. Fused into one conv each
        (what such a model is deployed as), it is a plain chain of convs and prunes well.
        """
        if self.coverage >= 0.8:
            return
        inside = {id(m) for s in self.blocks for m in self.get_block(s.name).modules()}
        unfused = self._unfused_modules(outside=inside)
        if unfused:
            raise self._unfused_error(list(unfused), f"only {100 * self.coverage:.0f}% of the conv parameters can "
                                                     "go into prunable blocks")

    def _analysis(self, name: str) -> ChannelAnalysis:
        if name not in self._analyses:
            self._analyses[name] = analyze_channels(self.partition.blocks[name], self.layers)
        return self._analyses[name]

    # -- public view ------------------------------------------------------------
    @property
    def blocks(self) -> List[BlockSpec]:
        """Block specs, in model order."""
        return list(self.partition.specs)

    @property
    def block_names(self) -> List[str]:
        return [s.name for s in self.partition.specs]

    @property
    def coverage(self) -> float:
        """Fraction of the model's conv parameters that sit inside blocks."""
        if self.total_conv_params == 0:
            return 0.0
        return sum(s.conv_params for s in self.partition.specs) / self.total_conv_params

    def _check_name(self, name: Any) -> str:
        """``name`` if it is one of this model's blocks; else an error listing them (not a KeyError)."""
        if not isinstance(name, str) or name not in self.partition.blocks:
            raise InvalidArgumentError(
                f"block {name!r} is not a block of this model; its blocks are {self.block_names}")
        return name

    def _check_sparsity(self, sparsity: Any) -> float:
        """``sparsity`` as the matching entry of ``block_sparsity`` (within 1e-9); else an error listing them."""
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
            raise ArgumentTypeError(
                f"sparsity must be a number, one of {self.block_sparsity}, got {sparsity!r} ({type(sparsity).__name__})")
        match = [s for s in self.block_sparsity if abs(s - float(sparsity)) < 1e-9]
        if not match:
            raise InvalidSparsityError(
                f"sparsity {sparsity} is not one of this block manager's sparsities {self.block_sparsity}; "
                "choose one of them, or build the block manager with this sparsity in block_sparsity"
            )
        return match[0]

    def get_block(self, name: str) -> fx.GraphModule:
        """The original (teacher) block; it shares its layers with the teacher model."""
        return self.partition.blocks[self._check_name(name)]

    def pruning_plan(self, name: str, sparsity: float) -> Dict[str, List[int]]:
        """Kept filter indices per layer for one descendant."""
        self._check_name(name)
        validate_sparsities([sparsity])
        return plan_pruning(self._analysis(name), sparsity)

    def get_descendant(self, name: str, sparsity: float) -> fx.GraphModule:
        """A fresh, untrained descendant of a block (a copy; the teacher is untouched)."""
        self._check_name(name)
        sparsity = self._check_sparsity(sparsity)
        return build_descendant(self.get_block(name), self.pruning_plan(name, sparsity), self._analysis(name))

    def open_store(self, blocks_dir: Union[str, BlockStore]) -> BlockStore:
        """Open a blocks directory and check it was written for this model and sparsities."""
        store = blocks_dir if isinstance(blocks_dir, BlockStore) else BlockStore(blocks_dir)
        store.check_fingerprint(self.fingerprint)
        if store.block_sparsity != self.block_sparsity or [b.name for b in store.blocks] != self.block_names:
            raise StoreError(
                f"blocks directory {str(store.root)!r} holds blocks {[b.name for b in store.blocks]} at "
                f"sparsities {store.block_sparsity}, but this block manager has {self.block_names} at "
                f"{self.block_sparsity}; extract the blocks again with this block manager"
            )
        return store

    def load_descendant(self, blocks_dir: Union[str, BlockStore], name: str, sparsity: float) -> nn.Module:
        """A descendant with the weights stored in ``blocks_dir`` (a new module, on ``device``)."""
        self._check_name(name)
        sparsity = self._check_sparsity(sparsity)
        store = self.open_store(blocks_dir)
        module, _ = load_descendant(store, self.get_block(name), self._analysis(name), name, sparsity)
        return module.to(self.device)

    def block_call_shapes(self) -> Dict[str, List[Tuple[int, ...]]]:
        """The input shape of each call of each block in one forward of the model.

        Usually one call per block; a submodule run once per pyramid level (a detector
        head's tower) runs its blocks once per level. FLOPs and latency count every call.
        """
        if self._call_shapes is None:
            shapes: Dict[str, List[Tuple[int, ...]]] = {n: [] for n in self.block_names}
            hooks = [
                self.get_block(n).register_forward_pre_hook(
                    lambda _m, args, n=n: shapes[n].append(tuple(args[0].shape)))
                for n in self.block_names
            ]
            try:
                with torch.no_grad():
                    dummy_runner(self.teacher.eval(), self.model_manager, self.model_input_size, self.device)()
            finally:
                for h in hooks:
                    h.remove()
            recorded = {s.name: s.input_shape for s in self.blocks}
            self._call_shapes = {n: v or [recorded[n]] for n, v in shapes.items()}
        return self._call_shapes

    @property
    def teacher(self) -> nn.Module:
        """The teacher as frame + original blocks (built once; hooks on blocks see its runs)."""
        if self._teacher is None:
            self._teacher = self.compose()
        return self._teacher

    def compose(self, blocks: Optional[Dict[str, nn.Module]] = None, check: bool = True) -> nn.Module:
        """The teacher with its blocks replaced by ``blocks`` (by name; others stay original).

        The result shares frame layers with the teacher. Each replacement must be a
        module that maps the block's input shape to its output shape: with ``check`` (the
        default) every replacement not checked before runs once on zeros of the block's
        recorded input shape, so a wrong module is named here instead of failing with a
        shape error inside the frame at the first forward. ``check=False`` is for stand-ins
        whose calls have side effects (timing wrappers, recorded outputs).
        """
        if blocks is not None and not isinstance(blocks, Mapping):
            raise ArgumentTypeError(
                f"blocks must be a dict {{block name: module}}, got {type(blocks).__name__}; "
                f"the block names are {self.block_names}"
            )
        chosen = dict(self.partition.blocks)
        for name, module in (blocks or {}).items():
            self._check_name(name)
            if not isinstance(module, nn.Module):
                raise ArgumentTypeError(
                    f"blocks[{name!r}] must be a torch.nn.Module, got {type(module).__name__}; "
                    "pass e.g. block_manager.get_descendant(name, sparsity)"
                )
            if check and module is not self.partition.blocks[name]:
                self._check_block_shape(name, module)
            chosen[name] = module
        return self.partition.compose(self.model, chosen)

    def _check_block_shape(self, name: str, module: nn.Module) -> None:
        """Run ``module`` once on zeros of block ``name``'s input shape and compare the output
        with the block's output shape; remembered per module, so a module is run once.

        Runs in eval mode without gradients (BatchNorm statistics stay as they are) and
        puts every submodule back in the mode it was in.
        """
        spec = next(s for s in self.partition.specs if s.name == name)
        key = (tuple(spec.input_shape), tuple(spec.output_shape))
        done = self._shapes_checked.get(module)
        if done is not None and key in done:
            return
        first = next((t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()), None)
        x = torch.zeros(spec.input_shape, device=first.device if first is not None else self.device,
                        dtype=first.dtype if first is not None else torch.float32)
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                out = module(x)
        except Exception as exc:
            raise InvalidArgumentError(
                f"the module given for {name} fails on the block's input of shape {spec.input_shape} "
                f"({type(exc).__name__}: {exc}); pass a module that maps {spec.input_shape} to {spec.output_shape}, "
                f"e.g. block_manager.get_descendant({name!r}, sparsity)"
            ) from exc
        finally:
            for m, mode in modes:
                m.training = mode
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        if shape != tuple(spec.output_shape):
            got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
            raise InvalidArgumentError(
                f"the module given for {name} returns {got} for the block's input {spec.input_shape}, but the "
                f"frame needs {spec.output_shape}; pass a descendant of {name} itself "
                f"(block_manager.get_descendant({name!r}, sparsity)), not one of another block"
            )
        self._shapes_checked.setdefault(module, set()).add(key)

    # -- extraction -------------------------------------------------------------
    def extract_all_blocks(self, blocks_dir: str, overwrite: bool = False) -> List[DescendantSpec]:
        """Generate every descendant of every block and write the blocks directory.

        The directory appears complete or not at all (written under a temporary name and
        exchanged in one step). An existing store of this model is replaced; another
        model's store needs ``overwrite=True``; a path holding anything else is refused
        (:class:`~legodnn.errors.NotOursError`) and left as it is.

        Args:
            blocks_dir: the blocks directory to write (created).
            overwrite: replace a store of another model at ``blocks_dir``.

        Returns:
            One spec per descendant (block, sparsity, kept filters, parameters, FLOPs,
            bytes, file hash), in block order.
        """
        with StoreWriter(blocks_dir, self.fingerprint, overwrite) as writer:
            manifest, descendants = self._write(writer)
            writer.commit(manifest)
        return descendants

    def _write(self, writer: StoreWriter) -> Tuple[StoreManifest, List[DescendantSpec]]:
        composed = self.compose()
        block_keys = {
            f"{self.partition.block_path(s.name)}.{k}" for s in self.blocks for k in self.get_block(s.name).state_dict()
        }
        frame_state = {k: v for k, v in composed.state_dict().items() if k not in block_keys}
        frame = FileRef(FRAME_FILE, writer.write_tensors(FRAME_FILE, frame_state))
        all_desc: List[DescendantSpec] = []
        jobs = [(s, sp) for s in self.blocks for sp in self.block_sparsity]
        call_shapes = self.block_call_shapes()
        bar = tqdm(jobs, desc="descendant blocks", disable=not self.verbose, leave=False)
        per_block: Dict[str, List[DescendantSpec]] = {s.name: [] for s in self.blocks}
        for spec, sparsity in bar:
            plan = self.pruning_plan(spec.name, sparsity)
            block = build_descendant(self.get_block(spec.name), plan, self._analysis(spec.name))
            file = descendant_file(spec.name, sparsity)
            sha = writer.write_tensors(file, block.state_dict())
            desc = DescendantSpec(
                block=spec.name,
                sparsity=sparsity,
                kept=plan,
                params=count_params(block),
                flops=sum(count_flops(block, shape, self.device) for shape in call_shapes[spec.name]),
                bytes=count_bytes(block),
                file=file,
                sha256=sha,
            )
            per_block[spec.name].append(desc)
            all_desc.append(desc)
        manifest = StoreManifest(
            fingerprint=self.fingerprint,
            model_class=type(self.model).__name__,
            model_input_size=tuple(self.model_input_size),
            block_sparsity=tuple(self.block_sparsity),
            compress_layer_max_ratio=self.compress_layer_max_ratio,
            max_convs_per_block=self.max_convs_per_block,
            coverage_conv_params=self.coverage,
            parts=tuple(PartEntry(p.path, _shape_of(p.example_inputs)) for p in self.parts),
            frame=frame,
            blocks=tuple(BlockEntry(spec, tuple(per_block[spec.name])) for spec in self.blocks),
        )
        if is_multi_input(self.model_input_size):
            _check_manifest_round_trip(manifest)
        return manifest, all_desc


#: a block that prunes what no block within the size limit can may hold this many times
#: the limit's convs (a ResNeSt bottleneck: 6 convs against 3 allowed in resnest14d; a
#: VoVNet OSA module: 9 against 5 in ese_vovnet19b_dw)
LARGER_BLOCK_FACTOR = 2


def _pruned_params(block: fx.GraphModule, analysis: ChannelAnalysis, layers: LayerRegistry) -> int:
    """Parameters of the block's prunable layers that lose input or output channels in
    some descendant (each layer counted once)."""
    pruned = np.zeros(len(analysis.class_importance), dtype=bool)
    for group in analysis.groups:
        for part in group.parts:
            pruned[part] = True
    modules = dict(block.named_modules())
    seen, total = set(), 0
    for node in block.graph.nodes:
        if node.op != "call_module" or node.target in seen or not layers.is_prunable(modules[node.target]):
            continue
        lays = [analysis.layouts.get(node.name)]
        lays += [analysis.layouts.get(a.name) for a in node.all_input_nodes]
        if any(lay is not None and len(lay) and pruned[lay].any() for lay in lays):
            seen.add(node.target)
            total += count_params(modules[node.target])
    return total


#: methods by which re-parameterisable blocks (RepVGG, MobileOne) fuse their branches
_REPARAM_METHODS = ("reparameterize", "switch_to_deploy")

def _check_input_sizes(value: Any) -> Union[Tuple[int, ...], Tuple[Tuple[int, ...], ...]]:
    """``model_input_size`` checked: one shape (batch first), or a tuple of shapes for a
    model whose forward takes several tensors (each checked the same way)."""
    if isinstance(value, (tuple, list)) and value and is_multi_input(value):
        return tuple(check_input_size(f"model_input_size[{i}]", s) for i, s in enumerate(value))
    return check_input_size("model_input_size", value)


def _shape_of(inputs: Sequence[torch.Tensor]) -> Tuple[int, ...]:
    """A part's example input shape for the manifest, which records one per part: that of
    its first input. It is for reading only (a reader traces the part again from the
    dummy run, which gives it every input), so a part with several inputs, fed by a
    model manager, still stores."""
    return tuple(inputs[0].shape)


def _check_manifest_round_trip(manifest: StoreManifest) -> None:
    """A model with several inputs is stored only where the manifest can read back its
    input shapes (one per input); otherwise refuse before the store is committed rather
    than write one that no reader can open."""
    try:
        back = StoreManifest.from_json(manifest.to_json())
        ok = back.model_input_size == manifest.model_input_size and back.parts == manifest.parts
    except Exception:
        ok = False
    if not ok:
        raise LegoDNNError(
            f"the blocks directory format records one input shape per model, and this model takes "
            f"{len(manifest.model_input_size)} inputs {manifest.model_input_size}: its blocks can be found, "
            "pruned and composed in memory (get_descendant, compose), but not stored yet")


def _provisional_spec(part: str, region: Region) -> BlockSpec:
    return BlockSpec(
        name="candidate",
        part=part,
        entry=region.entry,
        exit=region.exit,
        nodes=tuple(region.nodes),
        input_shape=(),
        output_shape=(),
        num_convs=region.num_convs,
        conv_params=region.conv_params,
    )
