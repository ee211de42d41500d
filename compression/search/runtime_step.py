"""The runtime step of the search: ONNX Runtime fp32 and int8 forms of the original and of the
most pruned structure that holds, measured like every other candidate
(:mod:`compression.forms.runtimes` builds and runs the graphs)."""

from __future__ import annotations

import time

from compression.forms.runtimes import OrtModule, candidates, check_batches, quantize_int8
from compression.search.context import Built, remeasure
from compression.search.verify import holds


def structure_step(ctx, source, to_beat: float | None = None) -> tuple[list, list[str]]:
    """ONNX Runtime fp32 and int8 candidates of one float structure (``search.Built``),
    measured like every other candidate; and notes for the report.

    ``to_beat``: the latency (ms) of a lossless torch form of the same structure (packed
    tokens, :mod:`compression.forms.packing`). When ONNX Runtime fp32 is slower than it, the int8
    graph is not made: int8 speeds both runtimes' Linear layers alike, so it would not win
    (packed torch usually beats ONNX Runtime on BERT-family encoders on the CPU, in fp32 and
    int8 alike).
    A profile with ``quantization: none`` gets no int8 graph either: it asked for float.
    """
    label = f"{source.candidate.ratio:.0%} {source.candidate.allocation}"
    if time.monotonic() > ctx.deadline:
        return [], [f"{label}: not exported (time limit)"]
    start = time.perf_counter()
    ctx.progress(0.9, "onnxruntime")
    found, said = candidates(
        source.float_module,
        ctx.example_inputs,
        check_batches(ctx.validation, ctx.example_inputs),
        ctx.profile.threads,
        int8=False,
    )
    ctx.tick("runtimes", start)  # the candidates' measurements count as verification
    out, c = [], source.candidate
    for precision, module in found:  # the int8 graph joins the list once fp32 is measured
        # The fp32 graph reproduces torch within EXPORT_ATOL (checked above): its figures on the
        # selection split are the torch structure's, so no second forward over the split. The
        # confirmation split, which decides acceptance, is still measured on the graph itself.
        figures = (c.metric, c.fidelity, c.recall) if precision == "onnxruntime-fp32" else None
        cand = remeasure(ctx, module, source, precision, figures)
        step = {"step": "runtime", "kept": cand.within_budget, "detail": precision}
        out.append(Built(module, source.float_module, cand, [*source.steps, step]))
        if precision != "onnxruntime-fp32":
            continue
        if ctx.profile.quantization == "none":
            said.append("int8 not tried: the profile's quantization is none")
            continue
        if to_beat is not None and cand.latency_ms > to_beat:
            said.append(
                f"int8 not tried: onnxruntime-fp32 {cand.latency_ms:.1f} ms is slower than "
                f"packed torch float32 {to_beat:.1f} ms"
            )
            continue
        start = time.perf_counter()
        try:
            int8_graph, quantizer_said = quantize_int8(module.onnx_bytes)
            found.append(
                (
                    "onnxruntime-int8",
                    OrtModule(int8_graph, module.input_names, ctx.profile.threads, module.spec),
                )
            )
            said += [quantizer_said] if quantizer_said else []
        except Exception as err:
            said.append(f"onnxruntime int8 quantization failed: {type(err).__name__}: {err}")
        ctx.tick("runtimes", start)
    return out, [f"{label}: {n}" for n in said]


def search_step(ctx, built: list, base, packed_ms: float | None = None) -> tuple[list, list[str]]:
    """ONNX Runtime candidates of the original and of the most pruned candidate within budget,
    measured like every other candidate; and notes for the report.

    Both, because int8 error compounds with pruning error: int8 of the unpruned original can
    be within budget where int8 of a pruned structure that holds in float is not (MiniLM's
    int8 claims by amount: ``benchmarks/results/claims.md``, ``python -m benchmarks.claims``).
    ``packed_ms``: the original's latency on packed tokens when the search packs them
    (:mod:`compression.forms.packing`); when ONNX Runtime fp32 of the original is slower, neither its
    int8 nor a pruned structure is exported (they would lose to their packed forms the same way).
    """
    profile = ctx.profile
    if "onnxruntime" not in profile.runtimes:
        return [], ["onnxruntime not in the profile's runtimes"]
    if profile.device != "cpu":
        return [], [f"onnxruntime is measured on cpu profiles only (this one: {profile.device})"]
    out, notes = structure_step(ctx, base, packed_ms)
    fp32 = next((b for b in out if b.candidate.precision == "onnxruntime-fp32"), None)
    if fp32 is not None and packed_ms is not None and fp32.candidate.latency_ms > packed_ms:
        return out, [*notes, "pruned structures not exported: packed torch serves faster"]
    # The most pruned float structure within budget that also holds on the confirmation split
    # (an export of one that verification would refuse is wasted).
    within = [
        b
        for b in built
        if b.candidate.within_budget and b.candidate.ratio > 0 and b.module is b.float_module
    ]
    pick = next((b for b in sorted(within, key=lambda b: b.candidate.macs) if holds(ctx, b)), None)
    if pick is not None:
        to_beat = pick.candidate.latency_ms if pick.candidate.packed else None
        found, said = structure_step(ctx, pick, to_beat)
        out += found
        notes += said
    return out, notes
