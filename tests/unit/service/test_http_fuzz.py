"""Fuzzing in process (issue 15): no input gets a 5xx from the v2 routes, ``/predict`` or the
admin API. Hypothesis drives ``create_app(core)`` (a real core: digits-cnn and MiniLM) through
``httpx.ASGITransport``, which raises any exception that escapes the app, so a bug shows as the
exception itself. Bounded: a few hundred examples per test, no example database on disk.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.serving.predict import predict

from .harness import TOKEN, started_core

pytestmark = pytest.mark.unit
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    with started_core(
        tmp_path_factory.mktemp("home"),
        models=["digits-cnn", "minilm"],
        max_body_bytes=256 << 10,
        max_rows_per_request=64,
        # Every valid compress request is checked all the way, then refused for space (507):
        # the fuzzer starts no compression processes.
        min_free_bytes=1 << 60,
    ) as core:
        yield core


def _ok(r) -> None:
    """Not a 5xx (507, the space refusal, is the one expected 5xx); errors are JSON."""
    assert r.status_code < 500 or r.status_code == 507, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str), r.text[:300]


# ---- strategies -----------------------------------------------------------------------------------

# Half the text holds UTF-16 surrogates, alone or in pairs: JSON carries them as escapes
# ("\udfff"), json.dumps writes them so, and st.text() leaves them out unless asked (they have
# no UTF-8 form; st.characters(codec=None) allows them but draws one in hundreds of strings).
surrogates = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)


def texts(max_size: int) -> st.SearchStrategy[str]:
    pieces = st.lists(st.text(max_size=3) | surrogates, min_size=1, max_size=max(1, max_size // 3))
    return st.text(max_size=max_size) | pieces.map("".join)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts(20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(texts(10), inner, max_size=6)
    ),
    max_leaves=40,
)
DATATYPES = ["FP32", "FP16", "FP64", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "BF16", "fp32", ""]
shapes = st.lists(st.integers(min_value=-2, max_value=70), max_size=5)
numbers = st.one_of(
    st.floats(width=64, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**66), max_value=2**66),
)


@st.composite
def tensors(draw):
    """An input tensor that is often nearly right: real names, datatypes, shapes and sizes."""
    name = draw(st.sampled_from(["INPUT", "TEXT", "IMAGE", ""]) | texts(8))
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(shapes | st.sampled_from([[1, 1, 8, 8], [2, 1, 8, 8], [0, 1, 8, 8], [1], [0]]))
    count = 1
    for d in shape:
        count *= max(d, 0)
    count = min(count, 300)
    if datatype == "BYTES":
        data = draw(st.lists(texts(30), min_size=count, max_size=count) | json_values)
    else:
        data = draw(st.lists(numbers, min_size=count, max_size=count) | json_values)
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    if draw(st.booleans()):
        tensor["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["binary_data_size", "shared_memory_region", "x"]),
                json_scalars,
                max_size=2,
            )
        )
    return tensor


@st.composite
def infer_bodies(draw):
    doc = {"inputs": draw(st.lists(tensors(), max_size=3) | json_values)}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["SCORES", "EMBEDDING", "X"])},
                    optional={
                        "parameters": st.dictionaries(
                            st.sampled_from(["binary_data", "classification"]),
                            json_scalars,
                            max_size=2,
                        )
                    },
                ),
                max_size=3,
            )
            | json_values
        )
    if draw(st.booleans()):
        doc["id"] = draw(json_scalars)
    if draw(st.booleans()):
        doc["parameters"] = draw(json_values)
    return doc


paths = st.sampled_from(
    [
        "/v2/models/digits-cnn/infer",
        "/v2/models/minilm/infer",
        "/v2/models/digits-cnn/versions/1/infer",
        "/v2/models/minilm/versions/7/infer",
        "/v2/models/nope/infer",
    ]
)


# ---- v2 --------------------------------------------------------------------------------------------


@FUZZ
@given(path=paths, body=infer_bodies())
def test_v2_json_bodies_never_get_a_5xx(client, path, body):
    _ok(client.post(path, content=json.dumps(body)))


@FUZZ
@given(
    path=paths,
    header=infer_bodies(),
    tail=st.binary(max_size=600),
    header_length=st.one_of(
        st.none(),
        st.integers(min_value=-5, max_value=5000).map(str),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=6),
    ),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "gzip, deflate"]),
    corrupt=st.booleans(),
)
def test_v2_binary_and_compressed_bodies_never_get_a_5xx(
    client, path, header, tail, header_length, encoding, corrupt
):
    head = json.dumps(header).encode()
    body = head + tail
    headers = {}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = (
            str(len(head)) if header_length == "0" else header_length
        )
    if encoding:
        headers["Content-Encoding"] = encoding
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "deflate":
            body = zlib.compress(body)
        if corrupt:
            body = body[: len(body) // 2]
    _ok(client.post(path, content=body, headers=headers))


@FUZZ
@given(body=st.binary(max_size=2000), path=paths)
def test_v2_arbitrary_bytes_never_get_a_5xx(client, body, path):
    _ok(client.post(path, content=body))


# ---- /predict ----------------------------------------------------------------------------------------


@FUZZ
@given(
    model=st.sampled_from(["digits-cnn", "minilm", "nope"]) | json_scalars,
    inputs=json_values
    | st.lists(st.lists(numbers, min_size=64, max_size=64), max_size=4)
    | st.lists(texts(40), max_size=70),
)
def test_predict_never_answers_a_5xx(client, core, model, inputs):
    status, body = client.run(predict(core.plane, model, inputs))
    assert status < 500, (status, body)
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # as the answer is rendered
    if status == 200:
        json.dumps(body, allow_nan=False)  # strict JSON
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str), body


# ---- text, through both front ends ------------------------------------------------------------------


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


@FUZZ
@given(sentences=st.lists(texts(40), min_size=1, max_size=8))
def test_text_with_any_characters_is_served_or_a_400(client, core, sentences):
    """Sentences as a client may send them (the strategies above reach MiniLM's tokenizer only
    by chance): lone surrogates are a 400 from both front ends, everything else is served."""
    valid = all(_encodes(s) for s in sentences)
    status, body = client.run(predict(core.plane, "minilm", sentences))
    assert status == (200 if valid else 400), (status, body)
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # as the answer is rendered
    tensor = {"name": "TEXT", "datatype": "BYTES", "shape": [len(sentences)], "data": sentences}
    body = json.dumps({"inputs": [tensor]})
    # JSON's parser joins a high and a low surrogate escape into one character: valid text.
    valid = all(_encodes(s) for s in json.loads(body)["inputs"][0]["data"])
    r = client.post("/v2/models/minilm/infer", content=body)
    assert r.status_code == (200 if valid else 400), r.text[:300]
    _ok(r)


# ---- admin -------------------------------------------------------------------------------------------

admin_calls = st.sampled_from(
    [
        ("POST", "/admin/models/digits-cnn/compress"),
        ("POST", "/admin/models/minilm/activate"),
        ("POST", "/admin/models/digits-cnn/activate"),
        ("POST", "/admin/models/digits-cnn/rollback"),
        ("POST", "/admin/models/nope/activate"),
    ]
)
profile_values = st.one_of(
    json_values,
    st.sampled_from(["cpu", "gpu", "edge", "auto", "/etc/passwd", "../x", "latest", ""]),
    st.dictionaries(
        st.sampled_from(["name", "ratios", "time_limit_s", "importance", "max_drop", "x"]),
        json_values,
        max_size=4,
    ),
)
variant_values = st.one_of(
    json_values,
    st.sampled_from(["latest", "original", "../../x", "x:y", "", "a\x00b", "a" * 5000]),
    texts(120),
)


@FUZZ
@given(
    call=admin_calls,
    body=st.one_of(
        st.fixed_dictionaries({"profile": profile_values}),
        st.fixed_dictionaries({"variant": variant_values}),
        json_values,
    ),
)
def test_admin_bodies_never_get_a_5xx(client, call, body):
    method, path = call
    headers = {"Authorization": f"Bearer {TOKEN}"}
    _ok(client.request(method, path, content=json.dumps(body), headers=headers))


@FUZZ
@given(job=st.text(min_size=1, max_size=300), method=st.sampled_from(["GET", "DELETE"]))
def test_admin_job_ids_never_get_a_5xx(client, job, method):
    from urllib.parse import quote

    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = client.request(method, "/admin/jobs/" + quote(job, safe=""), headers=headers)
    assert r.status_code < 500, (r.status_code, r.text[:200])
