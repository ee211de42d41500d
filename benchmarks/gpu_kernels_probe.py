# ruff: noqa: B023, E402  (kept as run: lambdas are called inside their loop iteration)
"""GPU kernel probe: dense fp32/fp16/bf16 vs 2:4 (CUTLASS, cuSPARSELt) Linear at MiniLM shapes, and
digits-cnn fp32/fp16/bf16 by batch size, timed with CUDA events (median of 200 after 10 warm-up).

    python benchmarks/gpu_kernels_probe.py        (from the repository root, on a CUDA machine)

Run as is once on an H100 (see benchmarks/results/gpu_kernels_h100.md); kept as run so its
numbers stay reproducible (since then only reformatted). Prints; writes nothing.
"""

import importlib
import json
import os

import torch
from torch import nn

out = {}
for m in [
    "pydantic",
    "yaml",
    "tqdm",
    "matplotlib",
    "torch_pruning",
    "tokenizers",
    "sentence_transformers",
    "transformers",
    "sklearn",
    "safetensors",
    "onnx",
    "onnxruntime",
    "bentoml",
    "starlette",
    "httpx",
    "prometheus_client",
    "hypothesis",
    "numpy",
    "onnxscript",
]:
    try:
        mod = importlib.import_module(m)
        out[m] = getattr(mod, "__version__", "?")
    except Exception as e:
        out[m] = "MISSING " + type(e).__name__
print(json.dumps(out, indent=0))
print(
    "cap",
    torch.cuda.get_device_capability(),
    torch.cuda.get_device_name(),
    "bf16",
    torch.cuda.is_bf16_supported(),
)
try:
    import onnxruntime as ort

    print("ort providers", ort.get_available_providers())
except Exception as e:
    print(e)
print("hf cache", os.path.exists(os.path.expanduser("~/.cache/huggingface")))
dev = "cuda"


def bench(fn, n=200):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(n):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured


def mask24(w):
    g = w.abs().reshape(-1, 4)
    idx = g.topk(2, dim=1).indices
    m = torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True)
    return m.reshape(w.shape)


for rows in (256, 2048, 8192):
    for o, i in ((384, 384), (1536, 384), (384, 1536)):
        x32 = torch.randn(rows, i, device=dev)
        w32 = torch.randn(o, i, device=dev)
        res = {"fp32": bench(lambda: nn.functional.linear(x32, w32))}
        for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            x, w = x32.to(dt), w32.to(dt)
            res[name] = bench(lambda: nn.functional.linear(x, w))
            wm = w * mask24(w)
            for backend in ("cutlass", "cusparselt"):
                try:
                    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
                    ws = to_sparse_semi_structured(wm)
                    y = nn.functional.linear(x, ws)
                    err = (y - nn.functional.linear(x, wm)).abs().max().item()
                    res[f"{name}-24-{backend}"] = (
                        bench(lambda: nn.functional.linear(x, ws)),
                        round(err, 4),
                    )
                except Exception as e:
                    res[f"{name}-24-{backend}"] = repr(e)[:120]
            # 3-D input
            try:
                y = nn.functional.linear(x.reshape(rows // 16, 16, i), ws)
                res["3d"] = list(y.shape)
            except Exception as e:
                res["3d"] = repr(e)[:120]
        print(rows, o, i, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()})
# digits-cnn-like
import importlib.util as iu

spec = iu.spec_from_file_location("digits", "service/models/digits.py")
dm = iu.module_from_spec(spec)
spec.loader.exec_module(dm)
DigitsCNN = dm.DigitsCNN
for bs in (8, 64, 256, 1024):
    m = DigitsCNN().eval().to(dev)
    x = torch.rand(bs, 1, 8, 8, device=dev)
    with torch.inference_mode():
        r = {"fp32": bench(lambda: m(x))}
        for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            mh = DigitsCNN().eval().to(dev).to(dt)
            xh = x.to(dt)
            r[name] = bench(lambda: mh(xh))
        torch.backends.cudnn.benchmark = True
        r["fp32-cudnnbench"] = bench(lambda: m(x))
        torch.backends.cudnn.benchmark = False
    print("digits-cnn bs", bs, {k: round(v, 4) for k, v in r.items()})
