"""``legodnn inspect``: what a blocks directory holds, as a table, without the model.

One row per descendant: its size, FLOPs, the accuracy drop and latency its profiles
measured, and the start of its file's SHA-256; above it, the store's identity (model
class, input size, fingerprint, weights and architecture digests) and each profile with
whether it still belongs to the weights and blocks the store holds now (a profile of
retrained weights is stale, and the optimizer refuses it).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["format_table", "inspect_arguments", "inspect", "store_summary"]

INSPECT_EXAMPLES = """examples:
  legodnn inspect --blocks runs/cli/trained
  legodnn inspect --blocks runs/cli/trained --json
"""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers (cells that parse as one) right-aligned."""
    def numeric(cell: str) -> bool:
        try:
            float(cell.replace(",", ""))
            return True
        except ValueError:
            return False

    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).rjust(w) if numeric(str(c)) and row is not headers else str(c).ljust(w)
                 for c, w in zip(row, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocks", required=True, metavar="DIR", help="the blocks directory to describe")
    parser.add_argument("--json", action="store_true", help="print the same as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="accepted for symmetry: inspect has no progress output")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its message")


def _profiles(store: Any) -> Dict[str, Any]:
    """Each profile the store holds, loaded, and whether it fits the store's weights/blocks."""
    from ..blockmanager.store import (
        ACCURACY_ESTIMATE,
        ACCURACY_MODEL_CHOICE,
        BLOCK_PROFILE,
        LATENCY_PROFILE,
    )
    from ..offline.accuracy_fit import FittedAccuracyModel
    from ..offline.profiles import ModelProfile
    from ..online.latency_profile import LatencyProfile

    out: Dict[str, Any] = {}
    if store.path(BLOCK_PROFILE).is_file():
        p = ModelProfile.load(store.root)
        out[BLOCK_PROFILE] = {"profile": p, "fresh": p.weights_digest == store.weights_digest,
                              "about": f"{p.metric_name}, teacher {p.teacher_metric:.4f} on {p.num_test_samples} images"}
    if store.path(LATENCY_PROFILE).is_file():
        p = LatencyProfile.load(store.root)
        out[LATENCY_PROFILE] = {"profile": p, "fresh": p.architecture_digest == store.architecture_digest,
                                "about": f"{p.device}, {p.backend}, {p.num_threads} thread(s), teacher "
                                         f"{1e3 * p.teacher_latency_s:.3f} ms"}
    if store.path(ACCURACY_ESTIMATE).is_file():
        p = FittedAccuracyModel.load(store.root)
        out[ACCURACY_ESTIMATE] = {"profile": p, "fresh": p.weights_digest == store.weights_digest,
                                  "about": f"fitted on {p.num_compositions} compositions, held-out mean abs error "
                                           f"{p.heldout_mean_abs_error:.4f}"}
    validated = store.read_json(ACCURACY_MODEL_CHOICE)
    if validated:
        out[ACCURACY_MODEL_CHOICE] = {"profile": None, "fresh": validated.get("weights_digest") == store.weights_digest,
                                      "about": f"{len(validated.get('measured', []))} compositions checked, best "
                                               f"estimate {validated.get('best')}"}
    return out


def store_summary(blocks_dir: str) -> Dict[str, Any]:
    """Everything ``inspect`` shows, as plain data (what ``--json`` prints)."""
    from ..blockmanager.store import BLOCK_PROFILE, LATENCY_PROFILE, BlockStore

    store = BlockStore(blocks_dir)
    m = store.manifest
    profiles = _profiles(store)
    drops = profiles[BLOCK_PROFILE]["profile"].table() if BLOCK_PROFILE in profiles else {}
    latencies = profiles[LATENCY_PROFILE]["profile"].table() if LATENCY_PROFILE in profiles else {}
    descendants: List[Dict[str, Any]] = []
    for block in m.blocks:
        for d in block.descendants:
            drop = drops.get(d.block, {}).get(d.sparsity)
            descendants.append({
                "block": d.block, "sparsity": d.sparsity, "params": d.params, "bytes": d.bytes, "flops": d.flops,
                "metric_drop": None if drop is None else drop.metric_drop,
                "latency_s": latencies.get(d.block, {}).get(d.sparsity), "file": d.file, "sha256": d.sha256,
            })
    return {
        "path": str(store.root), "model_class": m.model_class, "model_input_size": list(m.model_input_size),
        "block_sparsity": list(m.block_sparsity), "coverage_conv_params": m.coverage_conv_params,
        "fingerprint": m.fingerprint, "weights_digest": store.weights_digest,
        "architecture_digest": store.architecture_digest, "trained": dict(m.trained),
        "legodnn_version": m.legodnn_version, "torch_version": m.torch_version,
        "blocks": [{"name": b.spec.name, "convs": b.spec.num_convs, "conv_params": b.spec.conv_params,
                    "input_shape": list(b.spec.input_shape), "output_shape": list(b.spec.output_shape)}
                   for b in m.blocks],
        "profiles": {name: {"fresh": p["fresh"], "about": p["about"]} for name, p in profiles.items()},
        "descendants": descendants,
    }


def _optional(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def inspect(args: argparse.Namespace) -> int:
    """Print the store's identity, its profiles and one row per descendant."""
    summary = store_summary(args.blocks)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    size = "x".join(str(d) for d in summary["model_input_size"])
    print(f"store {summary['path']}: {summary['model_class']}, input {size}, {len(summary['blocks'])} blocks "
          f"({100 * summary['coverage_conv_params']:.1f}% of the conv parameters) at sparsities "
          f"{', '.join(f'{s:g}' for s in summary['block_sparsity'])}")
    print(f"fingerprint {summary['fingerprint'][:12]}, weights {summary['weights_digest'][:12]}, architecture "
          f"{summary['architecture_digest'][:12]}; {'trained' if summary['trained'] else 'not trained (extracted)'}; "
          f"legodnn {summary['legodnn_version']}, torch {summary['torch_version']}")
    if summary["profiles"]:
        for name, p in summary["profiles"].items():
            state = "current" if p["fresh"] else "STALE (measured other weights or blocks: profile again)"
            print(f"  {name}: {p['about']}; {state}")
    else:
        print("  no profiles yet: run legodnn profile and legodnn latency")
    rows = [[d["block"], f"{d['sparsity']:g}", f"{d['params']:,}", f"{d['bytes'] / 1e3:.1f}",
             f"{d['flops'] / 1e6:.2f}", _optional(d["metric_drop"], ".4f"),
             _optional(None if d["latency_s"] is None else 1e3 * d["latency_s"], ".3f"), d["sha256"][:12]]
            for d in summary["descendants"]]
    print(format_table(["block", "sparsity", "params", "KB", "MFLOPs", "drop", "ms", "sha256"], rows))
    return 0
