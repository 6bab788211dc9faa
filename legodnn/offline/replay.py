"""Run a frame from a block onward, reusing the teacher's activations for everything before.

The profiler scores each candidate descendant by replacing one block; the values that
do not depend on that block are the teacher's, already computed once per batch, so
each candidate pays only for the block and what comes after it.
"""

from __future__ import annotations

from typing import Any, Dict, Set

from torch import fx, nn

__all__ = ["RecordingRun", "ReplayFrom"]


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)


class RecordingRun(nn.Module):
    """Runs the frame like the model and keeps every node's value (for one batch)."""

    def __init__(self, frame: fx.GraphModule) -> None:
        super().__init__()
        self.frame = frame
        self.env: Dict[fx.Node, Any] = {}

    def forward(self, *args: Any) -> Any:
        interp = _Recorder(self.frame)
        out = interp.run(*args)
        self.env = interp.env
        return out


def downstream(frame: fx.GraphModule, node: fx.Node) -> Set[fx.Node]:
    """``node`` and every node that depends on it."""
    seen = {node}
    for n in frame.graph.nodes:
        if any(i in seen for i in n.all_input_nodes):
            seen.add(n)
    return seen


class ReplayFrom(nn.Module):
    """The frame with one block replaced, run from that block on over a recorded run."""

    def __init__(self, recording: RecordingRun, call: fx.Node, block: nn.Module) -> None:
        super().__init__()
        self.recording = recording
        self.call = call
        self.block = block
        self.redo = downstream(recording.frame, call)

    def forward(self, *args: Any) -> Any:
        env = {n: v for n, v in self.recording.env.items() if n not in self.redo}
        entry = self.call.args[0]
        env[self.call] = self.block(env[entry])
        return fx.Interpreter(self.recording.frame).run(*args, initial_env=env)
