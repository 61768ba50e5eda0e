"""Run an ONNX graph as a torch module, with the weights read from the ONNX file's initializers.

Why an interpreter and not a rebuilt training module: the ONNX files are the one source of truth
for the shipped weights (stored fp16, batch norm folded into the convolutions by the exporter), and
a replaced model (another classifier, a detector with more classes) keeps working as long as it
uses the operators below. Everything that depends only on constants (the exporter's static-padding
arithmetic, the fp16 -> fp32 casts of the weights) is folded once when the module is built, so a
forward pass runs only the convolutions and element-wise ops, which ``torch.compile`` can fuse.

Shapes computed from the input (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``) are carried
as Python lists of ints, which ``torch.compile`` traces without graph breaks.

Examples:
    >>> module = load_onnx_module("roadwork_lite0.onnx")            # doctest: +SKIP
    >>> logits = module(torch.rand(8, 3, 224, 224))["logit"]       # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from workzone._optional import require
from workzone.errors import ModelFileError

if TYPE_CHECKING:
    import torch

__all__ = ["load_onnx_module", "SUPPORTED_OPS"]

_Value = Any  # a torch.Tensor, or a list[int] for shapes computed at run time


def load_onnx_module(path: str | Path, *, dtype: str = "float32") -> "torch.nn.Module":
    """Build a torch module that computes the same outputs as the ONNX file.

    Args:
        path: the ``.onnx`` file (weights inside the file, no external data).
        dtype: ``float32``, ``float16`` or ``bfloat16``: floating weights are stored in it and the
            inputs are cast to it; outputs come back as float32.

    Returns:
        A module whose ``forward(*inputs)`` takes the graph inputs in order and returns a dict
        ``{output name: tensor}``.

    Raises:
        ModelFileError: the file cannot be read or uses an operator this interpreter lacks.
    """
    onnx = require("onnx", "gpu", "reading ONNX weights into torch")
    torch = require("torch", "gpu", "the torch backend")
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises protobuf errors of several types
        raise ModelFileError(f"cannot read {path} as ONNX: {exc}") from exc
    graph = model.graph
    consts: dict[str, Any] = {}
    for init in graph.initializer:
        consts[init.name] = torch.from_numpy(np.array(numpy_helper.to_array(init)))
    init_names = set(consts)
    inputs = [i.name for i in graph.input if i.name not in init_names]
    outputs = [o.name for o in graph.output]
    missing = sorted({n.op_type for n in graph.node} - set(SUPPORTED_OPS))
    if missing:
        raise ModelFileError(f"{path}: operators {missing} are not supported by the torch backend "
                             f"(supported: {sorted(SUPPORTED_OPS)}); use the onnxruntime backend")
    steps: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant(torch, numpy_helper, attrs)
            continue
        if node.input and all(n == "" or n in consts for n in node.input):
            # Constant folding: this node depends on weights and constants only.
            args = [consts[n] if n else None for n in node.input]
            try:
                outs = SUPPORTED_OPS[node.op_type](torch, args, attrs)
            except Exception as exc:  # noqa: BLE001 - report the node, whatever torch raised
                raise ModelFileError(f"{path}: cannot fold node {node.name!r} ({node.op_type}): {exc}") from exc
            for name, value in zip(node.output, outs):
                consts[name] = value
            continue
        steps.append((node.op_type, list(node.input), list(node.output), attrs))
    used = {n for _, ins, _, _ in steps for n in ins} | set(outputs)
    # Inputs that are settings rather than data (pads, shapes, clip bounds, axes) become Python values,
    # so that torch.compile sees constants instead of reading tensors back (a graph break).
    for op, ins, _, _ in steps:
        for k in _STATIC_INPUTS.get(op, ()):
            if k < len(ins) and ins[k] in consts and not isinstance(consts[ins[k]], (list, _Static)):
                consts[ins[k]] = _Static(consts[ins[k]].tolist())
    for name, value in consts.items():
        # Small integer constants are shapes, indices or axes: Python values, never device tensors.
        if hasattr(value, "is_floating_point") and not value.is_floating_point() and value.dtype != torch.bool \
                and value.numel() <= 64:
            consts[name] = _Static(value.tolist())
    consts = {k: v for k, v in consts.items() if k in used}
    return _build_module(torch, steps, consts, inputs, outputs, _torch_dtype(torch, dtype))


def _torch_dtype(torch: Any, name: str) -> Any:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype: expected one of {sorted(table)}, got {name!r}")
    return table[name]


def _build_module(torch: Any, steps: list, consts: dict, inputs: list[str], outputs: list[str], dtype: Any) -> Any:
    class OnnxGraphModule(torch.nn.Module):
        """The ONNX graph's non-constant nodes, run in order; constants are buffers."""

        def __init__(self) -> None:
            super().__init__()
            self.input_names = tuple(inputs)
            self.output_names = tuple(outputs)
            self.compute_dtype = dtype
            self._steps = steps
            self._slots: dict[str, str] = {}
            self._lists: dict[str, list[int]] = {}
            for i, (name, value) in enumerate(consts.items()):
                if isinstance(value, (list, _Static)):
                    self._lists[name] = value.value if isinstance(value, _Static) else value
                    continue
                if value.is_floating_point():
                    value = value.to(dtype)
                slot = f"c{i}"
                self.register_buffer(slot, value.contiguous(), persistent=False)
                self._slots[name] = slot

        def forward(self, *args: Any) -> dict[str, Any]:
            env: dict[str, Any] = dict(self._lists)
            for name, slot in self._slots.items():
                env[name] = getattr(self, slot)
            for name, x in zip(self.input_names, args):
                env[name] = x.to(self.compute_dtype) if x.is_floating_point() else x
            for op, ins, outs, attrs in self._steps:
                vals = SUPPORTED_OPS[op](torch, [env[n] if n else None for n in ins], attrs)
                for name, value in zip(outs, vals):
                    env[name] = value
            return {n: env[n].float() if env[n].is_floating_point() else env[n] for n in self.output_names}

    return OnnxGraphModule().eval()


def _constant(torch: Any, numpy_helper: Any, attrs: dict) -> Any:
    if "value" in attrs:
        return torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"])))
    for key, dt in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return torch.from_numpy(np.array(attrs[key], dt))
    for key, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return torch.from_numpy(np.array(list(attrs[key]), dt))
    raise ModelFileError(f"Constant node with attributes {sorted(attrs)} is not supported")


class _Static:
    """A constant input passed to its op as a Python value (int, float or nested list)."""

    def __init__(self, value: Any) -> None:
        self.value = value


# Which inputs of an op are settings (read as Python values), by position.
_STATIC_INPUTS: dict[str, tuple[int, ...]] = {
    "Clip": (1, 2), "Pad": (1, 2, 3), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,),
    "Resize": (1, 2, 3), "ReduceMean": (1,), "ConstantOfShape": (0,), "Gather": (1,),
}


# ---- operators: each takes (torch, inputs, attributes) and returns the list of outputs ----------------


def _ints(v: Any) -> list[int]:
    """A shape-like value (int, list of ints or an int tensor) as a flat list of Python ints."""
    if isinstance(v, (int, float)):
        return [int(v)]
    if isinstance(v, list):
        return [int(t) for t in _flat(v)]  # pure Python: torch.compile traces numpy calls as tensor ops
    return [int(t) for t in v.reshape(-1).tolist()]


def _floats(v: Any) -> list[float]:
    """A float setting (Python value or tensor) as a flat list of floats."""
    if isinstance(v, (int, float)):
        return [float(v)]
    if isinstance(v, list):
        return [float(t) for t in _flat(v)]
    return [float(t) for t in v.reshape(-1).tolist()]


def _flat(v: list) -> list:
    out: list = []
    for t in v:
        out.extend(_flat(t) if isinstance(t, list) else [t])
    return out


def _same(a: Any, b: Any) -> tuple[Any, Any]:
    # Constants were stored in the compute dtype; an int input stays int.
    if hasattr(a, "dtype") and hasattr(b, "dtype") and a.dtype != b.dtype and a.is_floating_point() and b.is_floating_point():
        b = b.to(a.dtype)
    return a, b


def _binary(fn: Callable) -> Callable:
    def op(torch: Any, x: list, attrs: dict) -> list:
        a, b = _same(x[0], x[1])
        return [fn(a, b)]
    return op


def _conv(torch: Any, x: list, attrs: dict) -> list:
    inp, w = _same(x[0], x[1])
    b = _same(inp, x[2])[1] if len(x) > 2 and x[2] is not None else None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ModelFileError(f"Conv auto_pad={attrs['auto_pad']!r} is not supported")
    nd = w.dim() - 2
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    begin, end = pads[:nd], pads[nd:]
    if begin != end:
        inp = torch.nn.functional.pad(inp, [p for pair in zip(reversed(begin), reversed(end)) for p in pair])
        begin = [0] * nd
    fn = torch.nn.functional.conv2d if nd == 2 else torch.nn.functional.conv1d
    return [fn(inp, w, b, stride=list(attrs.get("strides", [1] * nd)), padding=begin,
               dilation=list(attrs.get("dilations", [1] * nd)), groups=int(attrs.get("group", 1)))]


def _pad(torch: Any, x: list, attrs: dict) -> list:
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(attrs.get("pads", []))
    if len(x) > 3 and x[3] is not None:
        raise ModelFileError("Pad with an axes input is not supported")
    fill = _floats(x[2]) if len(x) > 2 and x[2] is not None else []
    value = fill[0] if fill else 0.0
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    flat = [p for pair in zip(reversed(begin), reversed(end)) for p in pair]
    # Trailing all-zero pairs are dropped so F.pad only sees the axes that change (N, C usually).
    while len(flat) > 2 and flat[-1] == 0 and flat[-2] == 0:
        flat = flat[:-2]
    if mode == "constant":
        return [torch.nn.functional.pad(x[0], flat, value=value)]
    return [torch.nn.functional.pad(x[0], flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])]


def _gemm(torch: Any, x: list, attrs: dict) -> list:
    a, b = _same(x[0], x[1])
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = float(attrs.get("alpha", 1.0)) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        y = y + float(attrs.get("beta", 1.0)) * _same(y, x[2])[1]
    return [y]


def _reshape(torch: Any, x: list, attrs: dict) -> list:
    shape = _ints(x[1])
    if not attrs.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x[0].reshape(shape)]


def _shape(torch: Any, x: list, attrs: dict) -> list:
    dims = list(x[0].shape)
    return [dims[attrs.get("start", 0):attrs.get("end", len(dims))]]


def _gather(torch: Any, x: list, attrs: dict) -> list:
    data, idx = x
    axis = int(attrs.get("axis", 0))
    scalar = isinstance(idx, int) or (hasattr(idx, "dim") and idx.dim() == 0)
    if isinstance(data, list):
        picked = [data[i] for i in _ints(idx)]
        return [picked[0] if scalar else picked]
    if not hasattr(idx, "dim"):
        idx = torch.tensor(idx, dtype=torch.int64, device=data.device)
    return [torch.index_select(data, axis, idx.reshape(-1).long()).reshape(
        list(data.shape[:axis]) + list(idx.shape) + list(data.shape[axis + 1:]))]


def _unsqueeze(torch: Any, x: list, attrs: dict) -> list:
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(attrs["axes"])
    v = x[0]
    if isinstance(v, int):
        return [[v]]
    for a in sorted(a % (v.dim() + len(axes)) for a in axes):
        v = v.unsqueeze(a)
    return [v]


def _squeeze(torch: Any, x: list, attrs: dict) -> list:
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(attrs.get("axes", []))
    v = x[0]
    if not axes:
        return [v.squeeze()]
    for a in sorted((a % v.dim() for a in axes), reverse=True):
        v = v.squeeze(a)
    return [v]


def _concat(torch: Any, x: list, attrs: dict) -> list:
    if any(isinstance(v, (list, int)) for v in x):
        out: list[int] = []
        for v in x:
            out.extend([v] if isinstance(v, int) else _ints(v))
        return [out]
    first = x[0]
    return [torch.cat([_same(first, v)[1] for v in x], dim=int(attrs["axis"]))]


def _slice(torch: Any, x: list, attrs: dict) -> list:
    data = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    if isinstance(data, list):
        return [data[starts[0]:ends[0]:steps[0]]]
    index: list[Any] = [slice(None)] * data.dim()
    flips = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= data.dim()
        n = data.shape[a]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[a] = slice(s, e, st)
        else:
            # Negative steps: torch has no negative slicing; flip, then slice forwards.
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            flips.append(a)
            index[a] = slice(n - 1 - s, n - 1 - e, -st)
    if flips:
        data = torch.flip(data, flips)
    return [data[tuple(index)]]


def _transpose(torch: Any, x: list, attrs: dict) -> list:
    perm = attrs.get("perm") or list(reversed(range(x[0].dim())))
    return [x[0].permute(list(perm))]


def _cast(torch: Any, x: list, attrs: dict) -> list:
    v = x[0]
    if isinstance(v, (list, int)):
        return [v]
    to = int(attrs["to"])
    table = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16, 6: torch.int32,
             7: torch.int64, 9: torch.bool, 2: torch.uint8, 3: torch.int8}
    if to not in table:
        raise ModelFileError(f"Cast to ONNX type {to} is not supported")
    target = table[to]
    # Inside the module floats stay in the compute dtype (a bf16 graph casts to bf16, not fp32).
    if target.is_floating_point and v.is_floating_point():
        return [v]
    if target.is_floating_point and not v.is_floating_point():
        return [v.to(torch.get_default_dtype())]
    return [v.to(target)]


def _constant_of_shape(torch: Any, x: list, attrs: dict) -> list:
    from onnx import numpy_helper

    shape = _ints(x[0])
    value = attrs.get("value")
    if not isinstance(x[0], list) and hasattr(x[0], "dim") and x[0].dim() == 0:
        shape = []
    fill = torch.from_numpy(np.array(numpy_helper.to_array(value))).reshape(-1) if value is not None else torch.zeros(1)
    return [torch.full(shape, fill[0].item(), dtype=fill.dtype)]


def _clip(torch: Any, x: list, attrs: dict) -> list:
    lo = x[1] if len(x) > 1 and x[1] is not None else attrs.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else attrs.get("max")
    lo = _floats(lo)[0] if lo is not None else None
    hi = _floats(hi)[0] if hi is not None else None
    return [torch.clamp(x[0], lo, hi)]


def _maxpool(torch: Any, x: list, attrs: dict) -> list:
    k = list(attrs["kernel_shape"])
    pads = list(attrs.get("pads", [0] * 2 * len(k)))
    if pads[:len(k)] != pads[len(k):]:
        raise ModelFileError("MaxPool with asymmetric pads is not supported")
    return [torch.nn.functional.max_pool2d(x[0], k, stride=list(attrs.get("strides", [1] * len(k))),
                                           padding=pads[:len(k)], dilation=list(attrs.get("dilations", [1] * len(k))),
                                           ceil_mode=bool(attrs.get("ceil_mode", 0)))]


def _resize(torch: Any, x: list, attrs: dict) -> list:
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = attrs.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    data = x[0]
    scales = _floats(x[2]) if len(x) > 2 and x[2] is not None else []
    sizes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
    size = sizes[2:] if sizes else None
    factor = scales[2:] if scales else None
    F = torch.nn.functional
    if mode == "nearest":
        nearest = attrs.get("nearest_mode", b"round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if ctm == "asymmetric" and nearest == "floor":
            return [F.interpolate(data, size=size, scale_factor=None if size else factor, mode="nearest")]
    elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return [F.interpolate(data, size=size, scale_factor=None if size else factor, mode="bilinear",
                              align_corners=ctm == "align_corners")]
    raise ModelFileError(f"Resize mode={mode!r} coordinate_transformation_mode={ctm!r} is not supported")


def _flatten(torch: Any, x: list, attrs: dict) -> list:
    axis = int(attrs.get("axis", 1))
    return [x[0].reshape(math.prod(x[0].shape[:axis]) if axis else 1, -1)]


def _reduce_mean(torch: Any, x: list, attrs: dict) -> list:
    axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(attrs.get("axes", []))
    keep = bool(attrs.get("keepdims", 1))
    return [x[0].mean(dim=axes or None, keepdim=keep)]


def _softmax(torch: Any, x: list, attrs: dict) -> list:
    return [torch.softmax(x[0], dim=int(attrs.get("axis", -1)))]


def _batchnorm(torch: Any, x: list, attrs: dict) -> list:
    inp, scale = _same(x[0], x[1])
    return [torch.nn.functional.batch_norm(inp, _same(inp, x[3])[1], _same(inp, x[4])[1], scale,
                                           _same(inp, x[2])[1], False, 0.0, float(attrs.get("epsilon", 1e-5)))]


def _where(torch: Any, x: list, attrs: dict) -> list:
    a, b = _same(x[1], x[2])
    return [torch.where(x[0], a, b)]


SUPPORTED_OPS: dict[str, Callable] = {
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(lambda a, b: a / b),
    "Pow": _binary(lambda a, b: a ** b),
    "Equal": _binary(lambda a, b: a == b),
    "Greater": _binary(lambda a, b: a > b),
    "Less": _binary(lambda a, b: a < b),
    "Min": _binary(lambda a, b: a.minimum(b)),
    "Max": _binary(lambda a, b: a.maximum(b)),
    "MatMul": _binary(lambda a, b: a @ b),
    "Sigmoid": lambda t, x, a: [t.sigmoid(x[0])],
    "Relu": lambda t, x, a: [t.relu(x[0])],
    "Exp": lambda t, x, a: [t.exp(x[0])],
    "Sqrt": lambda t, x, a: [t.sqrt(x[0])],
    "Tanh": lambda t, x, a: [t.tanh(x[0])],
    "Neg": lambda t, x, a: [-x[0]],
    "Identity": lambda t, x, a: [x[0]],
    "HardSigmoid": lambda t, x, a: [t.clamp(float(a.get("alpha", 0.2)) * x[0] + float(a.get("beta", 0.5)), 0, 1)],
    "HardSwish": lambda t, x, a: [t.nn.functional.hardswish(x[0])],
    "GlobalAveragePool": lambda t, x, a: [x[0].mean(dim=list(range(2, x[0].dim())), keepdim=True)],
    "Conv": _conv,
    "Pad": _pad,
    "Gemm": _gemm,
    "Reshape": _reshape,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Slice": _slice,
    "Transpose": _transpose,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Constant": lambda t, x, a: [],
    "Clip": _clip,
    "MaxPool": _maxpool,
    "Resize": _resize,
    "Flatten": _flatten,
    "ReduceMean": _reduce_mean,
    "Softmax": _softmax,
    "BatchNormalization": _batchnorm,
    "Where": _where,
}
