"""The profile's numeric precision, applied after pruning with torch's own tooling.

- ``float16`` / ``bfloat16`` run the model in half precision through :class:`HalfPrecision`:
  the weights are cast, floating-point inputs are cast to the weights' dtype on the way in (an
  image batch, a float mask) and floating-point outputs back to float32 on the way out, so a
  half variant is called and read exactly like the float original. Integer inputs (token ids,
  attention masks) pass unchanged. On CUDA a half-precision profile tries both dtypes
  (:func:`options`): same memory, different range and rounding, and which one is faster and
  within budget on a given GPU is measured, not assumed.
- ``int8-dynamic`` quantizes Linear weights to int8 per output channel and activations on the
  fly (``torch.ao.quantization.quantize_dynamic``), on inputs smoothed where that lowers the
  calibration error (:mod:`compression.forms.smoothing`). It is deterministic, so a saved variant
  stores its float weights (and smoothing scales) and re-applies it on load with identical
  results. Its kernels exist on the CPU only: :func:`place` leaves such a module there.
- On a CPU with native bfloat16 (AVX512-BF16 or AMX) a quantizing profile also tries
  ``bfloat16``: there it runs well ahead of float32 while keeping far more fidelity and
  neighbour recall than int8 (MiniLM's figures: ``benchmarks/results/claims.md``, from
  ``python -m benchmarks.claims``); without native support it is emulated and is not tried.

The search keeps a precision change only when it measurably speeds the variant up and the
metric stays within budget. :func:`place` puts a variant on its serving device, converting
2:4-sparse weights to semi-structured tensors on CUDA (see :mod:`compression.forms.sparsity`).
"""

from __future__ import annotations

import copy
import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compression.core.registry import Registry
from compression.forms import smoothing as smooth
from compression.forms.smoothing import SmoothedLinear
from compression.forms.sparsity import to_semi_structured

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HALF = ("float16", "bfloat16")


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors in ``value`` (nested in dicts, tuples, model outputs) to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):  # also transformers' ModelOutput (an OrderedDict)
        items = {k: _cast(v, dtype) for k, v in value.items()}
        try:
            return type(value)(**items)
        except TypeError:
            return items
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_cast(v, dtype) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class HalfPrecision(nn.Module):
    """``module`` in float16/bfloat16, called with and returning float32 like the original.

    Attribute reads the wrapper does not have (``config``, ``dtype`` of a Hugging Face model)
    fall through to the wrapped module. ``sparsity`` is ``"2:4"`` when the weights carry a 2:4
    pattern that :func:`place` turns into semi-structured sparse tensors on CUDA.
    """

    def __init__(self, module: nn.Module, dtype: str, sparsity: str = "none") -> None:
        if dtype not in HALF:
            raise ValueError(f"HalfPrecision takes one of {HALF}, got {dtype!r}")
        super().__init__()
        self.module = module.to(DTYPES[dtype])
        self.half_dtype = dtype
        self.sparsity = sparsity
        self.semi_structured = 0  # Linear layers converted by place() (2:4 on CUDA)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dtype = DTYPES[self.half_dtype]
        out = self.module(*_cast(args, dtype), **_cast(kwargs, dtype))
        return _cast(out, torch.float32)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None or name.startswith("__"):  # copy/pickle probes stay on the wrapper
                raise
            return getattr(inner, name)


def quantize_int8(model: nn.Module, smoothing: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` whose Linear layers run int8 dynamic quantization (per channel).

    ``smoothing``: per-input-channel scales of some Linear layers, by name
    (:mod:`compression.forms.smoothing`); those run as int8 on a smoothed input.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model)
    if smoothing:
        smooth.apply(model, smoothing)
    with warnings.catch_warnings():  # torch deprecates torch.ao in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def fused_int8(layers: list[nn.Module]) -> nn.Module | None:
    """One int8 Linear layer computing ``layers`` side by side (their outputs concatenated), or
    None when they cannot be fused.

    ``layers``: dynamically quantized Linear layers that read the same input (a transformer's
    query, key and value), each maybe inside a :class:`~compression.forms.smoothing.SmoothedLinear`,
    then all with the same smoothing scale. The fused layer's weights are the same int8 values
    with the same per-channel scales, stacked, so its outputs are theirs exactly; it quantizes
    the input once, not once per layer, and runs one matrix product, which is faster on the
    CPU than three smaller ones.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    inner = [m.linear if isinstance(m, SmoothedLinear) else m for m in layers]
    scales = [m.inv_scale if isinstance(m, SmoothedLinear) else None for m in layers]
    if len(layers) < 2 or not all(type(m) is DynamicLinear for m in inner):
        return None
    if any(s is None for s in scales):
        if any(s is not None for s in scales):
            return None
    elif not all(torch.equal(scales[0], s) for s in scales[1:]):
        return None
    weights = [m.weight() for m in inner]
    if any(w.qscheme() != torch.per_channel_affine or w.q_per_channel_axis() != 0 for w in weights):
        return None
    if len({w.shape[1] for w in weights}) != 1 or len({m.weight().dtype for m in inner}) != 1:
        return None
    stacked = torch._make_per_channel_quantized_tensor(
        torch.cat([w.int_repr() for w in weights]),
        torch.cat([w.q_per_channel_scales() for w in weights]),
        torch.cat([w.q_per_channel_zero_points() for w in weights]),
        0,
    )
    bias = torch.cat(
        [
            m.bias() if m.bias() is not None else torch.zeros(w.shape[0])
            for m, w in zip(inner, weights, strict=True)
        ]
    )
    fused = DynamicLinear(stacked.shape[1], stacked.shape[0], dtype=weights[0].dtype)
    fused.set_weight_bias(stacked, bias)
    return fused if scales[0] is None else SmoothedLinear(fused, scales[0])


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), read from the Linux
    kernel's CPU flags; False elsewhere (bfloat16 is then emulated by oneDNN, and slower)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


# Precision modes by label: each takes the float module, the sparsity mark and the int8 smoothing
# scales (None, or by layer name; only int8 uses them) and returns the module in that precision
# (a copy when anything changes). A profile's ``dtype`` is a label that
# names a torch dtype (:data:`DTYPES`), its ``quantization`` ``none`` or any other label.
Scales = dict[str, torch.Tensor] | None
MODES: Registry[Callable[[nn.Module, str, Scales], nn.Module]] = Registry("precision")


@MODES.register("float32")
def _float32(model: nn.Module, sparsity: str, smoothing: Scales) -> nn.Module:
    return model


@MODES.register("float16")
def _float16(model: nn.Module, sparsity: str, smoothing: Scales) -> nn.Module:
    return HalfPrecision(copy.deepcopy(model), "float16", sparsity)


@MODES.register("bfloat16")
def _bfloat16(model: nn.Module, sparsity: str, smoothing: Scales) -> nn.Module:
    return HalfPrecision(copy.deepcopy(model), "bfloat16", sparsity)


@MODES.register("int8-dynamic")
def _int8_dynamic(model: nn.Module, sparsity: str, smoothing: Scales) -> nn.Module:
    return quantize_int8(model, smoothing)


def quantizations() -> tuple[str, ...]:
    """The registered labels a profile's ``quantization`` may name (besides ``none``)."""
    return tuple(m for m in MODES if m not in DTYPES)


def apply(
    model: nn.Module,
    dtype: str,
    quantization: str,
    sparsity: str = "none",
    smoothing: Scales = None,
) -> nn.Module:
    """Return ``model`` in the given dtype and quantization (a copy when anything changes).

    ``sparsity`` ``"2:4"`` marks a half-precision module for conversion by :func:`place`;
    unstructured sparsity needs nothing here (its zeros are ordinary weights). ``smoothing``:
    int8 activation-smoothing scales by Linear layer name (:mod:`compression.forms.smoothing`).
    """
    mode = MODES.get(quantization if quantization != "none" else dtype)
    return mode(model, sparsity, smoothing)


def options(dtype: str, quantization: str, device: str, cpu_bfloat16: bool = False) -> list[str]:
    """Precision labels the search tries for a profile, preferred first.

    ``int8-dynamic`` for a quantizing profile, and beside it ``bfloat16`` on a CPU that computes
    it natively when the profile asks (``cpu_bfloat16``); the profile's dtype otherwise, and on
    CUDA the other half dtype beside it (bfloat16 where the GPU supports it).
    """
    if quantization == "int8-dynamic":
        bf16 = cpu_bfloat16 and device == "cpu" and native_bfloat16()
        return ["int8-dynamic", *(["bfloat16"] if bf16 else [])]
    if dtype == "float32":
        return []
    if not device.startswith("cuda"):
        return [dtype]
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return [dtype, *(d for d in HALF if d != dtype and (d != "bfloat16" or bf16))]


def split_label(label: str) -> tuple[str, str]:
    """(dtype, quantization) of a precision label such as ``float16`` or ``int8-dynamic``."""
    if label in DTYPES:
        return label, "none"
    if label not in MODES:
        raise ValueError(f"unknown precision {label!r}; expected one of {list(MODES)}")
    return "float32", label


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` holds torch.ao dynamically quantized layers (CPU-only kernels)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules())


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for one with neither)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def place(module: nn.Module, device: str | torch.device) -> nn.Module:
    """Put a variant on ``device`` for serving or measuring; returns the module to call.

    int8-dynamic modules stay on the CPU (their kernels exist nowhere else). A 2:4-marked
    half-precision module on CUDA gets its eligible Linear weights converted to semi-structured
    sparse tensors, once (:func:`compression.forms.sparsity.to_semi_structured`).
    """
    device = torch.device(device)
    if is_quantized(module):
        return module
    if device_of(module) != device:
        module.to(device)
    if (
        isinstance(module, HalfPrecision)
        and module.sparsity == "2:4"
        and device.type == "cuda"
        and not module.semi_structured
    ):
        module.semi_structured = to_semi_structured(module.module)
    return module
