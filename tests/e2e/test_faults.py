"""Issue 15 against real ``slimserve serve`` processes: hostile and careless clients, killed
workers, a full and a read-only home.

- bodies: a 20 MB /predict and a chunked 1 GB v2 body are refused while they stream (413),
  the worker's memory does not grow with them;
- /predict: errors in the declared ``{"error"}`` shape, no traceback per client error;
- slow clients: slow headers, dribbled headers and slow bodies are answered 408 and closed;
  200 concurrent connections are all served;
- schemathesis against the served /docs.json (bounded): no failed check;
- a worker killed with SIGKILL during a compression leaves no job process behind, and the
  restarted worker never runs two;
- a full home keeps serving (metrics live elsewhere) and refuses new variants with 507; a
  read-only home starts and serves the originals.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from service.launch import SlimServer, share_builtin_cache

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DIGIT = {
    "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with short read deadlines (2 s headers, 3 s body)."""
    home = tmp_path_factory.mktemp("guarded")
    srv = SlimServer(
        home, "digits-cnn,minilm", SLIMSERVE_HEADER_TIMEOUT_S="2", SLIMSERVE_BODY_TIMEOUT_S="3"
    ).start()
    yield srv
    srv.stop()


def _worker(server: SlimServer) -> psutil.Process:
    (worker,) = [
        p
        for p in psutil.Process(server.proc.pid).children(recursive=True)
        if "_bentoml_impl.worker.service" in " ".join(p.cmdline())
    ]
    return worker


def _connect(server: SlimServer) -> socket.socket:
    host, port = server.address.split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


# ---- item 3: body limits ---------------------------------------------------------------------------


def test_big_bodies_are_refused_while_they_stream(guarded):
    worker = _worker(guarded)
    rss_before = worker.memory_info().rss
    row = "[" + ",".join(["0.5"] * 64) + "]"
    body = ('{"model":"digits-cnn","inputs":[' + ",".join([row] * 70_000) + "]}").encode()
    assert len(body) > 18_000_000
    r = httpx.post(f"{guarded.url}/predict", content=body, timeout=120,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and "8388608-byte limit" in r.json()["error"], r.text[:300]

    # A chunked body (no length announced) of up to 1 GB: refused once it passes 8 MB.
    for path in ("/v2/models/digits-cnn/infer", "/predict"):
        s = _connect(guarded)
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
        sent = 0
        while sent < (1 << 30):
            if select.select([s], [], [], 0)[0]:
                break  # the server answered
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += 1 << 20
        answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
        assert sent < 200 << 20, f"{path}: {sent >> 20} MB went in before the 413"
    grown = (worker.memory_info().rss - rss_before) / 1e6
    assert grown < 200, f"worker memory grew {grown:.0f} MB"


# ---- item 10: /predict's errors -----------------------------------------------------------------------


def test_predict_errors_are_declared_json_and_not_logged(guarded):
    log_lines = len(guarded.tail(10**9).splitlines())
    with httpx.Client(timeout=60) as c:
        for _ in range(1000):
            r = c.post(f"{guarded.url}/predict", json={"model": "resnet", "inputs": [[1]]})
            assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
        for body, status, needle in [
            (b"{not json", 400, "Invalid JSON"),
            (b'{"inputs": [[1]]}', 400, "model"),
            (b'{"model": "digits-cnn", "inputs": [[1e39]]}', 400, "inputs"),
            (b'{"model": "minilm", "inputs": []}', 400, "non-empty"),
        ]:
            r = c.post(f"{guarded.url}/predict", content=body,
                       headers={"content-type": "application/json"})  # fmt: skip
            assert r.status_code == status and isinstance(r.json()["error"], str), r.text
            assert needle in r.json()["error"], r.text
        r = c.post(
            f"{guarded.url}/predict", content=b"x", headers={"content-type": "multipart/form-data"}
        )
        assert r.status_code == 415, r.text
    added = len(guarded.tail(10**9).splitlines()) - log_lines
    assert added < 20, f"{added} log lines for 1,004 client errors:\n{guarded.tail(2000)}"


# ---- item 9: slow clients and many connections ----------------------------------------------------


def test_slow_clients_are_closed_and_many_connections_are_served(guarded):
    head = b"POST /v2/models/digits-cnn/infer HTTP/1.1\r\nHost: t\r\n"
    slow_headers = [_connect(guarded) for _ in range(15)]
    for s in slow_headers:
        s.sendall(head)
    slow_bodies = [_connect(guarded) for _ in range(15)]
    for s in slow_bodies:
        s.sendall(head + b"Content-Length: 1000\r\n\r\n{")
    dribblers = [_connect(guarded) for _ in range(10)]
    stop = threading.Event()

    def dribble() -> None:  # a header byte a second: a deadline, not an idle timer
        for s in dribblers:
            s.sendall(head)
        while not stop.wait(1.0):
            for s in dribblers:
                with contextlib.suppress(OSError):
                    s.sendall(b"X")

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        answers = [_read_all(s) for s in slow_headers + slow_bodies + dribblers]
    finally:
        stop.set()
        t.join()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert len(refused) == 40, [a[:60] for a in answers if not a.startswith(b"HTTP/1.1 408")]

    def one(_):
        with httpx.Client(timeout=120) as c:  # a connection each
            return c.post(f"{guarded.url}/v2/models/digits-cnn/infer", json=DIGIT).status_code

    with ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(one, range(200)))
    assert codes == [200] * 200, sorted(set(codes))


# ---- schemathesis against the served OpenAPI ---------------------------------------------------------


def test_schemathesis_finds_nothing_in_the_served_openapi(guarded, tmp_path):
    # /docs.json lists every route (v2, admin, /predict, health, metrics; issue 29).
    # positive_data_acceptance is left out: /predict's "inputs" is any JSON in the schema, and
    # which inputs a model accepts depends on the model named beside them. No token is sent:
    # the admin routes answer as to an outside client (401); tests/unit/service/test_openapi.py
    # drives them with the token. Warnings (hints: "only 401", "404 for random model names")
    # are no findings and are left out of the output. One worker: hypothesis parses lambda
    # sources with ast, which on CPython 3.11 is not thread-safe (gh-106905: "AST constructor
    # recursion depth mismatch" in the coverage phase with --workers 2, a crash of the tool).
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{guarded.url}/docs.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "300", "--generation-database", "none", "--seed", "15",
        "--report-dir", str(tmp_path), "--workers", "1", "--warnings", "off",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "No issues found" in done.stdout, done.stdout[-2000:]


# ---- what held: SIGTERM under load ----------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path):
    """A server of its own for a test that stops it, with nothing else sent to it first: the
    fuzzing above leaves /metrics megabytes long (BentoML labels its request metrics with the
    raw path), a poll of it then takes longer than the requests it watches."""
    srv = SlimServer(tmp_path / "home", "digits-cnn,minilm")
    yield srv.start()
    srv.stop()


def test_sigterm_under_load_completes_every_request_in_flight(fresh):
    import os
    import signal

    from service.launch import metric_value

    # Long enough to be in flight together: three micro-batches of 32 long sentences each,
    # queued in order, so the first request alone takes three MiniLM forwards while all 16
    # arrive; the 16 are 48 forwards to finish after SIGTERM. Long sentences: with packed
    # tokens a short one costs little, and 16 short requests finished before the first poll
    # below answered on a loaded machine.
    rows = 3 * 32
    sentence = " ".join(["Structured pruning removes whole channels, so the model is faster."] * 4)
    sentences = [sentence] * rows
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [rows], "data": sentences}]}

    def one(_):
        try:
            return httpx.post(
                f"{fresh.url}/v2/models/minilm/infer", json=body, timeout=300
            ).status_code
        except httpx.HTTPError as err:
            return type(err).__name__

    httpx.get(f"{fresh.url}/metrics", timeout=60)  # the first scrape sets up; then polls are quick
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        inflight = 0.0
        deadline = time.monotonic() + 120
        while inflight < 16 and time.monotonic() < deadline:
            text = httpx.get(f"{fresh.url}/metrics", timeout=60).text
            inflight = metric_value(text, "slimserve_inflight_requests", model="minilm")
        done = [f.result() for f in futures if f.done()]
        assert inflight == 16, f"only {inflight} requests in flight; finished: {done}"
        os.killpg(fresh.proc.pid, signal.SIGTERM)  # what a pod's termination sends
        codes = [f.result() for f in futures]
    assert codes == [200] * 16, codes
    fresh.proc.wait(120)


# ---- item 6: a killed worker leaves no job process ------------------------------------------------


def _job_processes(server: SlimServer) -> list[psutil.Process]:
    procs = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "multiprocessing.spawn" in " ".join(p.cmdline()) and p.status() != "zombie":
                procs.append(p)
        except psutil.NoSuchProcess:
            pass
    return procs


def _orphans(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_a_killed_worker_leaves_no_job_running_and_no_duplicate_starts(tmp_path):
    with SlimServer(tmp_path / "home", "digits-cnn", SLIMSERVE_AUTO_COMPRESS="true").start() as srv:
        deadline = time.monotonic() + 120
        while not (jobs := _job_processes(srv)) and time.monotonic() < deadline:
            time.sleep(0.5)  # the start-up compression job
        assert jobs, "no compression job process started"
        job_pids = [p.pid for p in jobs]
        worker = _worker(srv)
        worker.kill()  # SIGKILL: no clean-up code runs in the worker
        deadline = time.monotonic() + 60
        while _orphans(job_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _orphans(job_pids), f"job processes {_orphans(job_pids)} outlived their worker"
        # BentoML starts a new worker; it compresses again, never two jobs at once.
        deadline = time.monotonic() + 300
        most = 0
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{srv.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            most = max(most, len(_job_processes(srv)))
            time.sleep(0.5)
        for _ in range(20):
            most = max(most, len(_job_processes(srv)))
            time.sleep(0.5)
        assert most <= 1, f"{most} job processes at once"
        r = httpx.post(f"{srv.url}/v2/models/digits-cnn/infer", json=DIGIT, timeout=60)
        assert r.status_code == 200, r.text


# ---- item 4: a full home, a read-only home -----------------------------------------------------------


@pytest.fixture
def small_home(tmp_path):
    """A 64 MB tmpfs as the home (root only: skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_home_keeps_serving_and_a_read_only_home_starts(small_home, tmp_path):
    home = small_home / "home"
    home.mkdir()
    share_builtin_cache(home)
    env = {"SLIMSERVE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    # The launcher's own files (its log) stay off the small disk.
    with SlimServer(tmp_path / "launcher", "digits-cnn", **env).start() as srv:
        filler = small_home / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        assert shutil.disk_usage(small_home).free < 1 << 20
        with httpx.Client(timeout=60) as c:
            codes = [c.post(f"{srv.url}/v2/models/digits-cnn/infer", json=DIGIT).status_code
                     for _ in range(300)]  # fmt: skip
            assert codes == [200] * 300, sorted(set(codes))
            assert c.get(f"{srv.url}/livez").status_code == 200
            assert "slimserve_inference_requests_total" in c.get(f"{srv.url}/metrics").text
            r = srv.admin("POST", "/models/digits-cnn/compress", json={"profile": "cpu"})
            assert r.status_code == 507 and "free" in r.json()["error"], r.text
            r = srv.admin("POST", "/models/digits-cnn/activate", json={"variant": "original"})
            assert r.status_code == 507, r.text
            assert c.post(f"{srv.url}/v2/models/digits-cnn/infer", json=DIGIT).status_code == 200
        assert srv.proc.poll() is None
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_home)], check=True)
    with SlimServer(tmp_path / "launcher-ro", "digits-cnn", **env).start() as srv:
        r = httpx.post(f"{srv.url}/v2/models/digits-cnn/infer", json=DIGIT, timeout=60)
        assert r.status_code == 200, r.text
        r = srv.admin("POST", "/models/digits-cnn/compress", json={"profile": "cpu"})
        assert r.status_code == 507 and "read-only" in r.json()["error"], r.text
