"""A layer-by-layer summary of a model, like Keras' ``model.summary()`` in the notebook.

Each leaf module, and any module with parameters of its own, with its output shape on one 32x32 image and its
parameters. BatchNorm's running statistics are buffers, not parameters (Keras counts them as non-trainable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cifarkit.models.registry import count_parameters


@dataclass(frozen=True)
class LayerRow:
    name: str  # the module's path in the model, e.g. "0" or "blocks.3.conv"
    kind: str  # its class name, e.g. "Conv2d"
    output_shape: str  # Keras style, batch as None: "(None, 16, 32, 32)"; "-" when forward never ran it
    params: int  # parameters the module owns itself, not those of its children


@dataclass(frozen=True)
class ModelSummary:
    layers: list[LayerRow]
    total: int
    trainable: int

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        header = ("layer (type)", "output shape", "params")
        cells = [(f"{r.name} ({r.kind})", r.output_shape, f"{r.params:,}") for r in self.layers]
        w = [max(len(row[i]) for row in [header, *cells]) for i in range(3)]

        def line(layer: str, shape: str, params: str) -> str:
            return f"{layer:<{w[0]}}  {shape:<{w[1]}}  {params:>{w[2]}}"

        rule = "-" * (sum(w) + 4)
        counts = {"total": self.total, "trainable": self.trainable, "non-trainable": self.non_trainable}
        lines = [rule, line(*header), rule, *(line(*c) for c in cells), rule]
        return "\n".join(lines + [f"{kind} params: {n:,}" for kind, n in counts.items()])


def _shape_text(output: object) -> str:
    """A tensor's shape with the batch dimension as None; a tuple or list of tensors, each shape."""
    if isinstance(output, torch.Tensor):
        return f"({', '.join(['None', *map(str, output.shape[1:])])})"
    if isinstance(output, (tuple, list)):
        return ", ".join(_shape_text(o) for o in output)
    return "?"


def summarize(model: nn.Module, input_size: int = 32) -> ModelSummary:
    """Run one ``input_size`` x ``input_size`` image through ``model`` (in eval mode, restored) and describe it."""
    layers = {
        name or type(model).__name__: module
        for name, module in model.named_modules()
        if not any(module.children()) or any(True for _ in module.parameters(recurse=False))
    }
    shapes: dict[str, str] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            shapes.setdefault(name, _shape_text(output))  # a module run twice keeps its first output

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in layers.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = [
        LayerRow(
            name, type(module).__name__, shapes.get(name, "-"), sum(p.numel() for p in module.parameters(recurse=False))
        )
        for name, module in layers.items()
    ]
    return ModelSummary(rows, count_parameters(model), count_parameters(model, trainable_only=True))


def summary_rows(model: nn.Module, input_size: int = 32) -> list[dict[str, str | int]]:
    """:func:`summarize`'s layers as dicts (name, kind, output_shape, params), for a notebook to show as a table."""
    return [asdict(row) for row in summarize(model, input_size).layers]
