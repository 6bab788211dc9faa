"""Find single-input/single-output regions of an fx graph and choose the blocks.

A region with entry value ``a`` and exit value ``b`` is the set of nodes on paths from
``a`` to ``b``. It takes exactly one tensor in and gives one tensor out iff ``a``
dominates ``b`` (every path from the graph input to ``b`` passes through ``a``) and
``b`` post-dominates every successor of ``a`` inside the region (nothing computed
inside is used outside; ``a`` itself may feed other branches, as a residual input
does). Candidates come from
walking up the dominator tree from every exit, which bounds the work by the block
size limit; the chosen blocks are the disjoint set that covers the most prunable
parameters (weighted interval scheduling over the topological order).

Some modules hold more convs than the limit and have no single-tensor cut inside: a
ResNeSt bottleneck (its downsample runs beside five convs into one sum), a VoVNet OSA
module (its input and every stage are concatenated into one conv). No block within the
limit prunes their channels. Such *larger* regions, up to a second, higher limit, are
candidates too, marked ``oversized``; they are weighed by the layers they really prune
(the channel analysis says which) and lose every tie to blocks within the limit, so they
are chosen only where they prune more than any choice of blocks within the limit.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Set

from torch import fx

from .layers import LayerRegistry, default_layers

__all__ = ["Region", "find_candidate_regions", "select_regions", "constant_nodes"]


@dataclass(frozen=True)
class Region:
    """A candidate block: its entry node, exit node and the nodes it holds (entry excluded)."""

    entry: str
    exit: str
    nodes: FrozenSet[str]
    first: int  # topological index range, for the disjointness test
    last: int
    num_convs: int
    prunable_params: int
    conv_params: int
    oversized: bool = False  # more convs than the block size limit (see the module docstring)


def _is_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape")


def constant_nodes(graph: fx.Graph) -> Set[fx.Node]:
    """Nodes that do not depend on any placeholder (attributes and what is computed from them)."""
    consts: Set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "get_attr" or (
            node.op in ("call_function", "call_method", "call_module")
            and all(i in consts for i in node.all_input_nodes)
        ):
            consts.add(node)
    return consts


class _InputsRoot:
    """The virtual node above the placeholders of a graph with several inputs.

    Dominators need one root; with it, a block's entry still has to dominate its exit,
    so blocks take one tensor even in a two-input model. It is no tensor, so no block
    starts at it.
    """

    op = "root"
    name = "<inputs>"
    target = None
    meta: Dict[str, object] = {}


def _dominators(order: List[fx.Node], preds: Dict[fx.Node, List[fx.Node]], root: fx.Node) -> Dict[fx.Node, fx.Node]:
    """Immediate dominators on a DAG given in topological order (Cooper-Harvey-Kennedy)."""
    index = {n: i for i, n in enumerate(order)}
    idom: Dict[fx.Node, fx.Node] = {root: root}
    for node in order:
        if node is root:
            continue
        candidates = [p for p in preds[node] if p in idom]
        if not candidates:
            continue
        new = candidates[0]
        for p in candidates[1:]:
            a, b = p, new
            while a is not b:
                while index[a] > index[b]:
                    a = idom[a]
                while index[b] > index[a]:
                    b = idom[b]
            new = a
        idom[node] = new
    return idom


def find_candidate_regions(
    gm: fx.GraphModule, max_convs: int, min_nodes: int = 1, layers: Optional[LayerRegistry] = None,
    oversized_convs: int = 0, max_linears: Optional[int] = None,
) -> List[Region]:
    """All single-entry/single-exit regions with at most ``max_convs`` convolutions (and
    ``max_linears`` linear layers, if given) and at least one prunable layer (``layers``
    says which custom leaves count as convs).

    With ``oversized_convs`` above ``max_convs``, regions of up to that many convs are
    returned too, marked ``oversized``."""
    layers = default_layers if layers is None else layers
    modules = dict(gm.named_modules())
    consts = constant_nodes(gm.graph)
    order = [n for n in gm.graph.nodes if n not in consts]
    index = {n: i for i, n in enumerate(order)}
    placeholders = [n for n in order if n.op == "placeholder"]
    output = next(n for n in order if n.op == "output")
    if not placeholders:
        return []
    preds = {n: [i for i in n.all_input_nodes if i not in consts] for n in order}
    if len(placeholders) == 1:
        source = placeholders[0]
    else:  # several model inputs: dominance is counted from one root above them all
        source = _InputsRoot()
        order.insert(0, source)  # type: ignore[arg-type]
        index = {n: i for i, n in enumerate(order)}
        preds[source] = []
        for ph in placeholders:
            preds[ph] = [source]
    succs: Dict[fx.Node, List[fx.Node]] = {n: [] for n in order}
    for n in order:
        for p in preds[n]:
            succs[p].append(n)
    # a dead end that computes (timm's ``_assert`` of a shape) stays with the node after
    # it: an edge into the output would keep every block from spanning the tensor it checks
    for i, n in enumerate(order[:-1]):
        if n.op in ("call_function", "call_method", "call_module") and not succs[n]:
            succs[n].append(order[i + 1])
            preds[order[i + 1]].append(n)
    # other dead ends (nodes with no path to the output) would break post-dominance: treat
    # them as flowing into the output
    rsuccs = {n: (succs[n] or ([output] if n is not output else [])) for n in order}
    idom = _dominators(order, preds, source)
    rorder = list(reversed(order))
    rpreds = rsuccs
    ipdom = _dominators(rorder, rpreds, output)

    # post-dominator tree intervals for O(1) ancestor tests
    children: Dict[fx.Node, List[fx.Node]] = {n: [] for n in order}
    for n, d in ipdom.items():
        if n is not d:
            children[d].append(n)
    tin: Dict[fx.Node, int] = {}
    tout: Dict[fx.Node, int] = {}
    clock = 0
    stack = [(output, False)]
    while stack:
        n, done = stack.pop()
        if done:
            tout[n] = clock
            clock += 1
            continue
        tin[n] = clock
        clock += 1
        stack.append((n, True))
        stack.extend((c, False) for c in children[n])

    def pdominates(b: fx.Node, a: fx.Node) -> bool:
        return a in tin and b in tin and tin[b] <= tin[a] and tout[a] <= tout[b]

    # ancestor / descendant bitsets
    anc: Dict[fx.Node, int] = {}
    for n in order:
        m = 1 << index[n]
        for p in preds[n]:
            m |= anc[p]
        anc[n] = m
    desc: Dict[fx.Node, int] = {}
    for n in rorder:
        m = 0
        for s in succs[n]:
            m |= desc[s] | (1 << index[s])
        desc[n] = m

    conv_mask = prunable_mask = 0
    conv_w: Dict[int, int] = {}
    prunable_w: Dict[int, int] = {}
    for n in order:
        if n.op == "call_module" and layers.is_prunable(modules[n.target]):
            mod = modules[n.target]
            size = sum(p.numel() for p in mod.parameters())
            prunable_mask |= 1 << index[n]
            prunable_w[index[n]] = size
            if layers.is_conv(mod):
                conv_mask |= 1 << index[n]
                conv_w[index[n]] = size

    # a layer with weights called at several places must sit whole in one block or in the
    # frame: splitting its calls would untie the shared weights
    calls: Dict[str, int] = {}
    for n in order:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) | (1 << index[n])
    shared_masks = [
        m for t, m in calls.items()
        if bin(m).count("1") > 1 and any(True for _ in modules[t].parameters())
        or bin(m).count("1") > 1 and any(True for _ in modules[t].buffers())
    ]

    # a module called at several places is counted once per region
    def weight(mask: int, table: Dict[int, int]) -> int:
        total, seen = 0, set()
        while mask:
            low = mask & -mask
            i = low.bit_length() - 1
            target = order[i].target
            if target not in seen:
                seen.add(target)
                total += table[i]
            mask ^= low
        return total

    conv_one = {i: 1 for i in conv_w}
    linear_mask = prunable_mask & ~conv_mask
    linear_one = {i: 1 for i in prunable_w if i not in conv_w}
    regions: List[Region] = []
    for b in order:
        if b.op in ("placeholder", "output") or not _is_tensor(b):
            continue
        a = idom.get(b)
        while a is not None:
            body = desc[a] & anc[b]
            n_convs = weight(body & conv_mask, conv_one)  # distinct conv layers
            if n_convs > max(max_convs, oversized_convs) or (
                    max_linears is not None and weight(body & linear_mask, linear_one) > max_linears):
                break
            # nothing inside may be used outside: b post-dominates a's successors on the way
            if (
                _is_tensor(a)
                and body & prunable_mask
                and all(pdominates(b, s) for s in succs[a] if body >> index[s] & 1)
                and all(body & m in (0, m) for m in shared_masks)
            ):
                idx = _bits(body)
                if len(idx) >= min_nodes:
                    nodes = frozenset(order[i].name for i in idx)
                    regions.append(
                        Region(
                            entry=a.name,
                            exit=b.name,
                            nodes=nodes,
                            first=idx[0],
                            last=idx[-1],
                            num_convs=n_convs,
                            prunable_params=weight(body & prunable_mask, prunable_w),
                            conv_params=weight(body & conv_mask, conv_w),
                            oversized=n_convs > max_convs,
                        )
                    )
            if a is source:
                break
            a = idom.get(a)
    return regions


def _bits(mask: int) -> List[int]:
    """Indices of the set bits of ``mask``, ascending."""
    out: List[int] = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def select_regions(
    regions: Sequence[Region],
    accept: Optional[Callable[[Region], bool]] = None,
    weigh: Optional[Callable[[Region], Optional[int]]] = None,
) -> List[Region]:
    """The disjoint regions that cover the most prunable parameters.

    Ties go to fewer oversized regions, then to fewer blocks, then to blocks holding more
    nodes (fewer frame ops between blocks). ``accept`` can veto a region (e.g. one with
    nothing to prune). ``weigh`` gives an oversized region its real weight, the
    parameters of the layers it prunes (None vetoes it); without it an oversized region
    goes by ``accept`` and its structural weight like any other. Both are called lazily,
    on chosen regions only: a vetoed region is dropped, a reweighed one put back with its
    weight, and the choice made again until every chosen region has been checked.
    """
    rejected: Set[Region] = set()
    checked: Set[Region] = set()
    current: List[Region] = list(regions)
    while True:
        pool = sorted((r for r in current if r not in rejected), key=lambda r: (r.last, r.first))
        chosen = _schedule(pool)
        fresh = [r for r in chosen if r not in checked]
        if (accept is None and weigh is None) or not fresh:
            return sorted(chosen, key=lambda r: r.first)
        changed: dict = {}
        for r in fresh:
            checked.add(r)
            if r.oversized and weigh is not None:
                w = weigh(r)
                if w is None:
                    rejected.add(r)
                elif w != r.prunable_params:
                    new = replace(r, prunable_params=w)
                    checked.add(new)
                    changed[r] = new
            elif accept is not None and not accept(r):
                rejected.add(r)
        if changed:
            current = [changed.get(r, r) for r in current]


def _schedule(pool: List[Region]) -> List[Region]:
    """Weighted interval scheduling; the score is (params, -oversized, -blocks, nodes)."""
    ends = [r.last for r in pool]
    best: List[tuple] = [(0, 0, 0, 0)]
    take: List[int] = [-1]
    back: List[int] = [0]
    for k, r in enumerate(pool):
        j = bisect.bisect_left(ends, r.first, 0, k)  # regions ending before r starts
        prev = best[j]
        with_r = (prev[0] + r.prunable_params, prev[1] - int(r.oversized), prev[2] - 1, prev[3] + len(r.nodes))
        if with_r > best[k]:
            best.append(with_r)
            take.append(k)
            back.append(j)
        else:
            best.append(best[k])
            take.append(-1)
            back.append(k)
    chosen: List[Region] = []
    k = len(pool)
    while k > 0:
        if take[k] >= 0:
            chosen.append(pool[take[k]])
            k = back[k]
        else:
            k = back[k]
    return chosen
