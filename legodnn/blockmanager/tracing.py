"""Graph capture: trace a model (or its traceable parts) with torch.fx.

Standard layers stay leaf modules, so a conv subclass is one node we can prune rather
than a tangle of ``F.conv2d`` calls on parameters; so do the custom layer types a
:class:`~.layers.LayerRegistry` declares. When the whole model does not trace
(torchvision's detectors loop over a list of images), the largest submodules that
take tensors and hold prunable layers are traced instead; the rest stays as it is. A
model or part whose forward takes several tensors is traced with one placeholder each.

A forward that takes Python decisions on its input's size (timm's ``MobileVitBlock``
computes patch counts with ``math.ceil`` of ``H`` and branches on them) does not trace
symbolically. Such a module is traced again *for its input size*
(:func:`_trace_for_size`): every node is run on the meta device as it is created, at the
example's batch size and at one more, and a tensor's ``shape``/``size()``/``dim()`` give
plain ints for every dim that is the same in both runs (the batch dim stays symbolic).
Ops whose output size depends on values (``nonzero``, ``unique``, NMS) have no meta
kernel, so a forward that sizes tensors by their values is not traced this way. The
graph then checks its input's size when it runs and refuses another
(:class:`~legodnn.errors.TraceError`), and it is checked against the eager module at a
third batch size on fresh values before it is used.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import TraceError
from .layers import CONV_TYPES, PRUNABLE_TYPES, LayerRegistry, default_layers

__all__ = ["TracedPart", "LegoTracer", "trace_model", "dummy_runner", "is_multi_input", "PRUNABLE_TYPES",
           "CONV_TYPES"]

logger = logging.getLogger(__name__)

class LegoTracer(fx.Tracer):
    """fx tracer that keeps torch.nn layers, subclasses of the prunable ones, and the
    layer types registered in ``layers`` as leaves."""

    def __init__(self, layers: Optional[LayerRegistry] = None) -> None:
        super().__init__()
        self.layers = default_layers if layers is None else layers

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.layers.is_leaf(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class TracedPart:
    """One traced region of the model: the whole model (``path == ""``) or a submodule."""

    path: str
    graph_module: fx.GraphModule
    example_input: Union[torch.Tensor, Tuple[torch.Tensor, ...]]  # a tuple for a part with several inputs

    @property
    def example_inputs(self) -> Tuple[torch.Tensor, ...]:
        """The example input(s) as a tuple, one tensor per placeholder."""
        x = self.example_input
        return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _count_prunable(module: nn.Module, layers: LayerRegistry) -> int:
    return sum(layers.is_prunable(m) for m in module.modules())


def _concrete_args(module: nn.Module, n_inputs: int = 1) -> Optional[Dict[str, Any]]:
    """Defaults of every argument after the first ``n_inputs``, so fx sees a function of
    exactly the tensors it was called with.

    Returns None when some later argument has no default (the module needs more inputs
    than it was given) or it takes fewer than ``n_inputs``.
    """
    params = list(inspect.signature(module.forward).parameters.values())
    params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(params) < n_inputs:
        return None
    extra: Dict[str, Any] = {}
    for p in params[n_inputs:]:
        if p.default is inspect.Parameter.empty:
            return None
        extra[p.name] = p.default
    return extra


#: torch's own nn.Module.__call__ and __getattr__ (fx replaces them while it traces)
_ORIG_MODULE_CALL = nn.Module.__call__
_ORIG_MODULE_GETATTR = nn.Module.__getattr__


class _SizedProxy(fx.Proxy):
    """A proxy whose ``shape``, ``ndim`` and ``len`` are the traced sizes (see :class:`_SizeTracer`)."""

    def __getattr__(self, k: str) -> Any:
        if k in ("shape", "ndim"):
            shape = self.tracer.traced_shape(self)  # type: ignore[attr-defined]
            if shape is not None:
                return shape if k == "shape" else len(shape)
        return super().__getattr__(k)

    def __len__(self) -> int:
        shape = self.tracer.traced_shape(self)  # type: ignore[attr-defined]
        if shape is not None and shape and isinstance(shape[0], int):
            return shape[0]
        return super().__len__()


class _SizeTracer(LegoTracer):
    """Traces a module for the sizes of its example input (module docstring).

    ``runs`` holds, per run, the meta tensors given to the placeholders (the example's
    shapes, then the same at a larger batch); ``concrete`` the values of the other
    arguments. Each node's value in every run is computed as the node is created.
    """

    def __init__(self, layers: LayerRegistry, runs: Sequence[Tuple[torch.Tensor, ...]],
                 concrete: Optional[Dict[str, Any]]) -> None:
        super().__init__(layers)
        self.runs = list(runs)
        self.concrete = dict(concrete or {})
        self.values: Dict[fx.Node, Tuple[Any, ...]] = {}
        self.n_placeholders = 0
        self.metas: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (tensor, its meta copy)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def _meta(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            if id(value) not in self.metas:  # the tensor is kept with its copy, so its id stays its own
                self.metas[id(value)] = (value, value.detach().to("meta"))
            return self.metas[id(value)][1]
        return value

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: Optional[str] = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "output":
            return node
        if kind == "placeholder":
            k = self.n_placeholders
            self.n_placeholders += 1
            self.values[node] = tuple(run[k] if k < len(run) else self.concrete.get(target) for run in self.runs)
            return node
        self.values[node] = tuple(self._evaluate(node, i) for i in range(len(self.runs)))
        return node

    def _evaluate(self, node: fx.Node, i: int) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self.values[n][i])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.values[n][i])
        if node.op == "get_attr":
            obj: Any = self.root
            for atom in node.target.split("."):
                obj = getattr(obj, atom)
            return self._meta(obj)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            module = self.root.get_submodule(node.target)
            tensors = {n: self._meta(t) for n, t in module.named_parameters()}
            tensors.update((n, self._meta(t)) for n, t in module.named_buffers())
            # fx patches nn.Module.__call__ and __getattr__ while it traces: a leaf runs
            # with torch's own, or its call would be traced again
            traced_call, traced_getattr = nn.Module.__call__, nn.Module.__getattr__
            nn.Module.__call__, nn.Module.__getattr__ = _ORIG_MODULE_CALL, _ORIG_MODULE_GETATTR  # type: ignore
            try:
                return torch.func.functional_call(module, tensors, tuple(args), kwargs)
            finally:
                nn.Module.__call__, nn.Module.__getattr__ = traced_call, traced_getattr  # type: ignore
        raise TraceError(f"cannot run a {node.op} node on the meta device")

    def traced_shape(self, proxy: fx.Proxy) -> Optional[Tuple[Any, ...]]:
        """The proxy's shape: ints where both runs agree, a ``size(d)`` node where they differ."""
        values = self.values.get(proxy.node)
        if not values or not all(isinstance(v, torch.Tensor) for v in values):
            return None
        shapes = [tuple(v.shape) for v in values]
        if len({len(s) for s in shapes}) != 1:
            return None
        dims: List[Any] = []
        for d, sizes in enumerate(zip(*shapes)):
            if len(set(sizes)) == 1:
                dims.append(int(sizes[0]))
            else:
                dims.append(fx.Tracer.create_proxy(self, "call_method", "size", (proxy, d), {}))
        return torch.Size(dims) if all(isinstance(d, int) for d in dims) else tuple(dims)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> Any:
        if (kind == "call_method" and target in ("size", "dim") and args and isinstance(args[0], _SizedProxy)
                and not kwargs and (len(args) == 1 or (target == "size" and len(args) == 2
                                                       and isinstance(args[1], int)))):
            shape = self.traced_shape(args[0])
            if shape is not None:
                if target == "dim":
                    return len(shape)
                return shape if len(args) == 1 else shape[args[1]]
        return super().create_proxy(kind, target, args, kwargs, *rest, **kw)


@torch.fx.node.has_side_effect
def check_traced_size(x: torch.Tensor, sizes: Tuple[Optional[int], ...], where: str) -> None:
    """Refuse an input of another size than a part traced for its input size was traced for.

    ``sizes`` has None for the dims that may vary (the batch). In a graph, after the placeholder.
    """
    if not isinstance(x, torch.Tensor) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if x.dim() != len(sizes) or any(s is not None and s != d for s, d in zip(sizes, x.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in sizes) + ")"
        raise TraceError(
            f"{where} (or a module in it) takes Python decisions on its input's size, so legodnn traced it for inputs of shape {want}; "
            f"it got {tuple(x.shape)}. Build the block manager with a model_input_size that gives this input, or "
            "run the model at the size it was built for")


def _trace_for_size(module: nn.Module, examples: Tuple[torch.Tensor, ...], layers: LayerRegistry,
                    concrete: Optional[Dict[str, Any]]) -> fx.GraphModule:
    """``module`` traced for the sizes of ``examples`` (module docstring), with size checks
    after its placeholders; raises if it cannot be."""
    if not examples or not all(isinstance(e, torch.Tensor) and e.dim() >= 1 for e in examples):
        raise TraceError("only tensor inputs with a batch dim can be traced for their size")
    runs = [tuple(e.detach().to("meta") for e in examples),
            tuple(torch.empty((e.shape[0] + 1,) + tuple(e.shape[1:]), dtype=e.dtype, device="meta")
                  for e in examples)]
    tracer = _SizeTracer(layers, runs, concrete)
    graph = tracer.trace(module, concrete_args=concrete or None)
    gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    where = type(module).__name__
    for ph, e in zip(placeholders, examples):
        sizes = (None,) + tuple(int(d) for d in e.shape[1:])
        with gm.graph.inserting_after(placeholders[-1]):
            gm.graph.call_function(check_traced_size, (ph, sizes, where))
    return gm


def _flat_tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        out: List[torch.Tensor] = []
        for v in value:
            out.extend(_flat_tensors(v))
        return out
    return []


def _trace_one(module: nn.Module, example: Any, layers: LayerRegistry,
               expected: Optional[List[torch.Tensor]] = None) -> fx.GraphModule:
    """Trace ``module`` for its tensor input(s), annotate shapes, check it matches eager.

    ``example`` is one tensor, or a tuple of tensors for a module whose forward takes
    several (a two-image model): each becomes a placeholder; blocks inside still take
    one tensor each (the region finder sees one graph input above all placeholders).
    ``expected`` is the eager output's tensors on ``example`` if already known (recorded
    during the dummy run), which saves a forward; the shape propagation's run is the
    traced graph's output, so a large model runs twice here, not four times.
    """
    examples = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    concrete = _concrete_args(module, len(examples))
    if concrete is None:
        raise TraceError(f"{type(module).__name__}.forward takes more required inputs than the "
                         f"{len(examples)} tensor(s) it is called with")
    tracer = LegoTracer(layers)
    # fx stores tensor constants (e.g. a FrozenBatchNorm's eps tensor or a torch.tensor
    # built in forward) as new `_tensor_constant<i>` attributes *on the traced module*;
    # left there, they would change the user's model and rename the constants of the
    # next trace, so a retrace would no longer match the store's fingerprint.
    before = set(vars(module))
    sized = False
    try:
        try:
            graph = tracer.trace(module, concrete_args=concrete or None)
            gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
        except Exception as exc:  # Python decisions on sizes? Trace it for its input's size
            try:
                gm = _trace_for_size(module, examples, layers, concrete)
            except Exception:
                raise exc from None
            sized = True
    finally:
        for name in set(vars(module)) - before:
            if name.startswith("_tensor_constant"):
                delattr(module, name)
    # concrete_args leave guard nodes for the fixed arguments; keep only the tensor inputs
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for ph in placeholders[len(examples):]:
        if ph.users:
            raise TraceError("the traced graph uses an argument other than the input tensors")
        gm.graph.erase_node(ph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    with torch.no_grad():
        got = _flat_tensors(ShapeProp(gm).propagate(*examples))
        if expected is None:
            expected = _flat_tensors(module(*examples))
    if len(expected) != len(got) or any(
        e.shape != g.shape or not torch.equal(e, g) for e, g in zip(expected, got)
    ):
        raise TraceError("the traced graph's output differs from the eager output")
    if sized:
        _check_at_another_batch(module, gm, examples)
    return gm


def _check_at_another_batch(module: nn.Module, gm: fx.GraphModule, examples: Tuple[torch.Tensor, ...]) -> None:
    """A graph traced for its input size must still match the eager module at another
    batch size on other values (floats get fresh random ones, the rest are repeated)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    others = []
    for e in examples:
        big = torch.cat([e, e[:1], e[:1]])
        if big.is_floating_point():
            noise = torch.rand(big.shape, generator=g, dtype=big.dtype)
            big = (noise * (e.max() - e.min()) + e.min()).to(big.device)
        others.append(big)
    with torch.no_grad():
        want, got = _flat_tensors(module(*others)), _flat_tensors(gm(*others))
    if len(want) != len(got) or any(w.shape != o.shape or not torch.equal(w, o) for w, o in zip(want, got)):
        raise TraceError(f"{type(module).__name__} traced for its input size does not match its eager output at "
                         "another batch size")


def _capture_inputs(
    model: nn.Module, paths: Sequence[str], run: Callable[[], Any]
) -> Dict[str, Tuple[Any, ...]]:
    """Run the model once and record the first positional inputs of each named submodule,
    and (``outputs``) copies of the tensors that first call gave."""
    seen: Dict[str, Tuple[Any, ...]] = {}
    handles = []
    modules = dict(model.named_modules())
    for path in paths:

        def hook(_m: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], path: str = path) -> None:
            if path not in seen:  # copies, as the input the call got (it may change it in place)
                seen[path] = (tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args), kwargs)

        def out_hook(_m: nn.Module, _args: Any, _kwargs: Any, output: Any, path: str = path) -> None:
            if path in seen and path not in outputs:  # copies: the caller may change them in place
                outputs[path] = [t.detach().clone() for t in _flat_tensors(output)]

        handles.append(modules[path].register_forward_pre_hook(hook, with_kwargs=True))
        handles.append(modules[path].register_forward_hook(out_hook, with_kwargs=True))
    outputs: Dict[str, List[torch.Tensor]] = {}
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return {p: v + (outputs.get(p),) for p, v in seen.items()}


def trace_model(
    model: nn.Module, run_dummy: Callable[[], Any], paths: Optional[Sequence[str]] = None,
    layers: Optional[LayerRegistry] = None,
) -> List[TracedPart]:
    """Trace the whole model, or else the largest single-tensor submodules with prunable layers.

    ``run_dummy`` runs the model on a dummy input (the model manager's dummy forward); it
    is how the example input of every part is found. ``paths`` traces exactly these
    parts (as recorded in a blocks directory) instead of searching. The model is put in
    eval mode for the trace (so BatchNorm statistics are not touched) and restored.
    ``layers`` names the custom leaf layers (:data:`~.layers.default_layers` if None).
    """
    layers = default_layers if layers is None else layers
    was_training = model.training
    model.eval()
    try:
        if paths is None:
            return _trace_parts(model, run_dummy, layers)
        try:
            inputs = _capture_inputs(model, list(paths), run_dummy)
            parts = []
            for p in paths:
                example = _example_of(inputs[p][0])
                parts.append(TracedPart(p, _trace_one(model.get_submodule(p), example, layers, inputs[p][2]),
                                        example))
            return parts
        except Exception as exc:
            raise TraceError(f"cannot trace the parts {list(paths)} of this model: {exc}") from exc
    finally:
        model.train(was_training)


def _trace_parts(model: nn.Module, run_dummy: Callable[[], Any], layers: LayerRegistry) -> List[TracedPart]:
    parts: List[TracedPart] = []
    failures: Dict[str, str] = {}
    frontier = [""]
    while frontier:
        inputs = _capture_inputs(model, frontier, run_dummy)
        next_frontier: List[str] = []
        for path in frontier:
            module = model.get_submodule(path)
            if path in inputs:
                args, kwargs, output = inputs[path]
                if args and not kwargs and all(isinstance(a, torch.Tensor) for a in args):
                    example = _example_of(args)
                    try:
                        gm = _trace_one(module, example, layers, output)
                    except Exception as exc:  # any fx failure means: look deeper
                        failures[path or "<model>"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    else:
                        parts.append(TracedPart(path, gm, example))
                        continue
                else:
                    failures[path or "<model>"] = "takes something other than tensors"
            for name, child in module.named_children():
                if layers.is_prunable(child) or layers.is_leaf(child) or _count_prunable(child, layers) == 0:
                    continue
                child_path = f"{path}.{name}" if path else name
                next_frontier.append(child_path)
        frontier = next_frontier
    if not parts:
        detail = "; ".join(f"{k}: {v}" for k, v in failures.items())
        raise TraceError(
            "legodnn could not trace the model or any submodule that holds convolutions "
            f"with torch.fx ({detail}). Make the forward free of data-dependent Python "
            "control flow, or wrap such code in a function registered with torch.fx.wrap."
        )
    if parts[0].path:
        logger.info(
            "the whole model does not trace (%s); traced parts: %s",
            failures.get("<model>", "?"),
            ", ".join(p.path for p in parts),
        )
    return parts


def _example_of(args: Sequence[Any]) -> Any:
    """The recorded positional inputs as one tensor, or a tuple of tensors if several."""
    tensors = tuple(a.detach() for a in args)
    return tensors[0] if len(tensors) == 1 else tensors


def is_multi_input(model_input_size: Any) -> bool:
    """Whether ``model_input_size`` is a tuple of shapes (one per model input), not one shape."""
    return len(model_input_size) > 0 and isinstance(model_input_size[0], (tuple, list, torch.Size))


def dummy_runner(
    model: nn.Module, model_manager: Any, model_input_size: Any, device: str
) -> Callable[[], Any]:
    """A function that runs the model once on a dummy input, via the model manager if any.

    ``model_input_size`` is one shape, or a tuple of shapes for a model whose forward
    takes several tensors (each gets a random tensor, passed positionally in order). A
    model manager gets ``model_input_size`` as it is and makes its own inputs.
    """
    if model_manager is not None:
        return lambda: model_manager.dummy_forward_to_gen_mid_data(model, model_input_size, device)
    if is_multi_input(model_input_size):
        return lambda: model(*(torch.rand(tuple(s), device=device) for s in model_input_size))
    return lambda: model(torch.rand(model_input_size, device=device))
