"""Open Inference Protocol v2 codec, driven by tritonclient's own request/response code."""

from __future__ import annotations

import gzip
import json
import random
import struct
import zlib
from importlib import metadata

import numpy as np
import pytest
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from service.serving.v2 import (
    HEADER_LENGTH,
    InferRequest,
    ModelSignature,
    TensorSpec,
    V2Error,
    check_version,
    deserialize_bytes,
    encode_infer_response,
    error_body,
    model_not_found,
    parse_infer_request,
    serialize_bytes,
    server_metadata,
)

pytestmark = pytest.mark.unit

MAX = 1 << 20

DIGITS = ModelSignature(
    name="digits-cnn",
    inputs=[TensorSpec(name="images", datatype="FP32", shape=[-1, 1, 8, 8])],
    outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
)
TEXT = ModelSignature(
    name="minilm",
    inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
    outputs=[
        TensorSpec(name="embedding", datatype="FP32", shape=[-1, 4]),
        TensorSpec(name="tokens", datatype="BYTES", shape=[-1]),
    ],
)
TWO_IN = ModelSignature(
    name="two",
    inputs=[
        TensorSpec(name="a", datatype="FP32", shape=[-1, 3]),
        TensorSpec(name="b", datatype="INT64", shape=[-1]),
        TensorSpec(name="mask", datatype="BOOL", shape=[-1], optional=True),
    ],
    outputs=[TensorSpec(name="out", datatype="FP32", shape=[-1])],
)


def digits(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32) * 16.0


TEXTS = np.array([b"hello", "h\u00e9llo w\u00f6rld".encode(), b"", b"a b c"], dtype=object)


def triton_body(inputs, outputs=None, request_id=""):
    """The exact body (and Inference-Header-Content-Length) tritonclient.http would POST."""
    return _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )


def infer_input(name, arr, datatype, binary):
    inp = InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def digits_body(arr, binary=True, outputs=None, request_id=""):
    return triton_body([infer_input("images", arr, "FP32", binary)], outputs, request_id)


def parse(body, hlen, sig=DIGITS, max_bytes=MAX, content_type=None, **kw) -> InferRequest:
    return parse_infer_request(body, hlen, content_type, sig, max_bytes, **kw)


def decode(body: bytes, headers: dict[str, str]) -> InferResult:
    hlen = headers.get(HEADER_LENGTH)
    return InferResult.from_response_body(
        body, verbose=False, header_length=None if hlen is None else int(hlen)
    )


def json_doc(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def image_entry(data, shape=(2, 1, 8, 8), datatype="FP32", name="images"):
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


# ------------------------------------------------------------------------------------------
# Round trips through tritonclient
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_binary", [True, False])
@pytest.mark.parametrize("out_binary", [True, False])
def test_digits_round_trip(in_binary, out_binary):
    x = digits(4)
    body, hlen = digits_body(
        x, binary=in_binary, outputs=[InferRequestedOutput("logits", binary_data=out_binary)]
    )
    assert (hlen is not None) == in_binary
    req = parse(body, hlen)
    got = req.inputs["images"]
    assert got.dtype == np.float32 and got.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(got, x)
    assert req.outputs_binary == {"logits": out_binary}
    assert req.requested_outputs == ["logits"]

    logits = np.arange(40, dtype=np.float32).reshape(4, 10) / 7.0
    resp, headers = encode_infer_response(
        "digits-cnn", "1", req.id, {"logits": logits}, DIGITS, req.outputs_binary
    )
    if out_binary:
        assert headers["Content-Type"] == "application/octet-stream"
        assert len(resp) == int(headers[HEADER_LENGTH]) + 160  # 40 floats x 4 bytes
    else:
        assert headers == {"Content-Type": "application/json"}
    result = decode(resp, headers)
    out = result.as_numpy("logits")
    assert out.dtype == np.float32 and out.shape == (4, 10)
    np.testing.assert_array_equal(out, logits)
    assert result.get_response()["model_name"] == "digits-cnn"
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False])
def test_text_bytes_round_trip(binary):
    body, hlen = triton_body(
        [infer_input("text", TEXTS, "BYTES", binary)],
        [InferRequestedOutput("embedding", binary), InferRequestedOutput("tokens", binary)],
    )
    req = parse(body, hlen, TEXT)
    got = req.inputs["text"]
    assert got.dtype == object and got.shape == (4,)
    assert got.tolist() == [b"hello", "h\u00e9llo w\u00f6rld".encode(), b"", b"a b c"]
    assert all(type(v) is bytes for v in got.tolist())

    emb = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    tokens = np.array([b"[CLS]", "\u00e9".encode(), b"", b"x"], dtype=object)
    resp, headers = encode_infer_response(
        "minilm", 1, None, {"embedding": emb, "tokens": tokens}, TEXT, req.outputs_binary
    )
    result = decode(resp, headers)
    np.testing.assert_array_equal(result.as_numpy("embedding"), emb)
    toks = result.as_numpy("tokens")
    assert toks.shape == (4,)
    if binary:  # binary BYTES come back as bytes, JSON BYTES as str (tritonclient's choice)
        assert toks.tolist() == [b"[CLS]", "\u00e9".encode(), b"", b"x"]
    else:
        assert toks.tolist() == ["[CLS]", "\u00e9", "", "x"]


def test_text_binary_keeps_non_utf8_and_nul_bytes():
    raw = np.array([b"\x00\xff\xfe", b"tail\x00\x00"], dtype=object)
    body, hlen = triton_body([infer_input("text", raw, "BYTES", True)])
    req = parse(body, hlen, TEXT)
    assert req.inputs["text"].tolist() == [b"\x00\xff\xfe", b"tail\x00\x00"]


def test_no_outputs_named_means_all_outputs_binary():
    # tritonclient sets parameters.binary_data_output = true when no outputs are given.
    body, hlen = triton_body([infer_input("text", TEXTS, "BYTES", False)])
    assert hlen is None
    req = parse(body, hlen, TEXT)
    assert req.outputs_binary == {"embedding": True, "tokens": True}
    assert req.requested_outputs == []
    assert req.parameters == {"binary_data_output": True}
    emb = np.ones((4, 4), dtype=np.float32)
    tokens = np.array([b"a", b"b", b"c", b"d"], dtype=object)
    resp, headers = encode_infer_response(
        "minilm", "1", None, {"embedding": emb, "tokens": tokens}, TEXT, req.outputs_binary
    )
    out = decode(resp, headers)
    assert out.get_output("embedding")["parameters"] == {"binary_data_size": 64}
    assert out.get_output("tokens")["parameters"] == {"binary_data_size": 20}  # 4 x (4 + 1)
    np.testing.assert_array_equal(out.as_numpy("embedding"), emb)


def test_mixed_binary_and_json_outputs_and_subset():
    body, hlen = triton_body(
        [infer_input("text", TEXTS, "BYTES", True)],
        [InferRequestedOutput("tokens", binary_data=False)],
    )
    req = parse(body, hlen, TEXT)
    assert req.outputs_binary == {"tokens": False}
    outputs = {"embedding": np.zeros((4, 4)), "tokens": np.array(["p", "q", "r", "s"])}
    resp, headers = encode_infer_response("minilm", "1", None, outputs, TEXT, req.outputs_binary)
    result = decode(resp, headers)
    assert result.as_numpy("embedding") is None  # not requested -> not sent
    assert result.as_numpy("tokens").tolist() == ["p", "q", "r", "s"]

    both = {"embedding": True, "tokens": False}
    resp, headers = encode_infer_response("minilm", "1", None, outputs, TEXT, both)
    result = decode(resp, headers)
    assert result.as_numpy("embedding").dtype == np.float32  # cast to the signature's FP32
    np.testing.assert_array_equal(result.as_numpy("embedding"), np.zeros((4, 4)))
    assert result.as_numpy("tokens").tolist() == ["p", "q", "r", "s"]


def test_request_id_round_trips():
    body, hlen = digits_body(digits(1), request_id="req-42")
    req = parse(body, hlen)
    assert req.id == "req-42"
    resp, headers = encode_infer_response(
        "digits-cnn", "1", req.id, {"logits": np.zeros((1, 10))}, DIGITS, req.outputs_binary
    )
    assert decode(resp, headers).get_response()["id"] == "req-42"
    body, hlen = digits_body(digits(1))
    assert parse(body, hlen).id is None
    resp, headers = encode_infer_response(
        "digits-cnn", "1", None, {"logits": np.zeros((1, 10))}, DIGITS, {}
    )
    assert "id" not in json.loads(resp)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_batch_dim_is_variable(n):
    x = digits(n, seed=n)
    body, hlen = digits_body(x)
    assert hlen is not None and len(body) == hlen + n * 256
    np.testing.assert_array_equal(parse(body, hlen).inputs["images"], x)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/json"])
def test_content_type_is_ignored(content_type):
    x = digits(2)
    body, hlen = digits_body(x)
    req = parse(body, hlen, content_type=content_type)
    np.testing.assert_array_equal(req.inputs["images"], x)


def test_header_length_as_string():
    x = digits(3)
    body, hlen = digits_body(x)
    np.testing.assert_array_equal(parse(body, str(hlen)).inputs["images"], x)


def test_json_nested_and_flat_data():
    x = digits(2)
    nested = json_doc([image_entry(x.tolist())])
    flat = json_doc([image_entry(x.ravel().tolist())])
    np.testing.assert_array_equal(parse(nested, None).inputs["images"], x)
    np.testing.assert_array_equal(parse(flat, None).inputs["images"], x)


def test_json_integers_accepted_for_float_input():
    req = parse(json_doc([image_entry([0] * 128)]), None)
    assert req.inputs["images"].dtype == np.float32
    assert float(req.inputs["images"].sum()) == 0.0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_body(encoding):
    x = digits(3)
    body, hlen = digits_body(x)
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    req = parse(packed, hlen, content_encoding=encoding)
    np.testing.assert_array_equal(req.inputs["images"], x)


DTYPES = [
    ("BOOL", np.array([True, False, True])),
    ("UINT8", np.array([0, 7, 255], dtype=np.uint8)),
    ("UINT16", np.array([0, 7, 65535], dtype=np.uint16)),
    ("UINT32", np.array([0, 7, 2**32 - 1], dtype=np.uint32)),
    ("UINT64", np.array([0, 7, 2**64 - 1], dtype=np.uint64)),
    ("INT8", np.array([-128, 0, 127], dtype=np.int8)),
    ("INT16", np.array([-32768, 0, 32767], dtype=np.int16)),
    ("INT32", np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32)),
    ("INT64", np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64)),
    ("FP16", np.array([-1.5, 0.0, 65504.0], dtype=np.float16)),
    ("FP32", np.array([-1.5, 1e-30, 3.4e38], dtype=np.float32)),
    ("FP64", np.array([-1.5, 1e-300, 1.7e308], dtype=np.float64)),
]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("datatype", "arr"), DTYPES, ids=[d for d, _ in DTYPES])
def test_every_datatype_round_trips(datatype, arr, binary):
    sig = ModelSignature(
        name="t",
        inputs=[TensorSpec(name="x", datatype=datatype, shape=[3])],
        outputs=[TensorSpec(name="y", datatype=datatype, shape=[3])],
    )
    body, hlen = triton_body(
        [infer_input("x", arr, datatype, binary)], [InferRequestedOutput("y", binary)]
    )
    got = parse(body, hlen, sig).inputs["x"]
    assert got.dtype == arr.dtype and got.shape == (3,)
    np.testing.assert_array_equal(got, arr)
    resp, headers = encode_infer_response("t", "1", None, {"y": got}, sig, {"y": binary})
    out = decode(resp, headers).as_numpy("y")
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_bytes_helpers_match_tritonclient():
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    arr = np.array([[b"ab", b""], ["\u00e9", b"\x00"]], dtype=object)
    ours = serialize_bytes(arr)
    assert ours == serialize_byte_tensor(arr).item()
    assert len(ours) == 4 * 4 + 2 + 0 + 2 + 1
    assert deserialize_bytes(ours, 4).tolist() == deserialize_bytes_tensor(ours).tolist()


# ------------------------------------------------------------------------------------------
# Metadata
# ------------------------------------------------------------------------------------------


def test_model_metadata_body():
    assert DIGITS.metadata() == {
        "name": "digits-cnn",
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert json.loads(json.dumps(TEXT.metadata()))["inputs"][0]["shape"] == [-1]


def test_server_metadata_body():
    body = server_metadata()
    assert body["name"] == "slimserve"
    assert body["version"] == metadata.version("slimserve")
    assert body["extensions"] == ["binary_tensor_data"]


def test_signature_validation():
    with pytest.raises(ValueError, match="datatype must be one of"):
        TensorSpec(name="x", datatype="FLOAT32", shape=[1])
    with pytest.raises(ValueError, match=r"shape dimensions must be >= 0 or -1"):
        TensorSpec(name="x", datatype="FP32", shape=[-2])
    with pytest.raises(ValueError, match=r"duplicate input names: \['x'\]"):
        ModelSignature(
            name="m",
            inputs=[TensorSpec(name="x", datatype="FP32", shape=[1])] * 2,
            outputs=[TensorSpec(name="y", datatype="FP32", shape=[1])],
        )


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_error_body_and_helpers():
    err = model_not_found("nope", ["minilm", "digits-cnn"])
    assert err.status == 404
    assert error_body(err) == {
        "error": "unknown model 'nope'; served models: ['digits-cnn', 'minilm']"
    }
    check_version(DIGITS, None)
    check_version(DIGITS, "1")
    with pytest.raises(V2Error, match=r"has no version '3'; versions: \['1'\]") as e:
        check_version(DIGITS, "3")
    assert e.value.status == 404
    assert error_body(ValueError("boom")) == {"error": "boom"}


def test_malformed_json():
    with pytest.raises(V2Error, match=r"request body is not valid JSON: Expecting") as e:
        parse(b'{"inputs": [', None)
    assert e.value.status == 400
    assert HEADER_LENGTH in e.value.message  # hints at the binary header


def test_binary_body_without_header_length():
    body, hlen = digits_body(digits(2))
    assert hlen is not None
    with pytest.raises(V2Error, match=r"not valid JSON.*needs the Inference-Header-Content-Length"):
        parse(body, None)


def test_malformed_json_header():
    body, hlen = digits_body(digits(2))
    with pytest.raises(V2Error, match=r"JSON header \(20 bytes\) is not valid JSON"):
        parse(body, 20)


def test_json_not_an_object():
    with pytest.raises(V2Error, match=r"must be an object with an 'inputs' list, got list"):
        parse(b"[1, 2]", None)


def test_missing_inputs():
    with pytest.raises(
        V2Error,
        match=r"needs an 'inputs' list; .* expects \['images \(FP32 \[-1, 1, 8, 8\]\)'\], got nothing",
    ):
        parse(b'{"outputs": []}', None)


def test_unknown_input_name_lists_expected():
    body, hlen = triton_body([infer_input("pixels", digits(2), "FP32", True)])
    with pytest.raises(
        V2Error,
        match=r"unknown input 'pixels'; model 'digits-cnn' expects inputs \['images \(FP32 \[-1, 1, 8, 8\]\)'\]",
    ) as e:
        parse(body, hlen)
    assert e.value.status == 400


def test_missing_required_input():
    a = np.zeros((2, 3), dtype=np.float32)
    body, hlen = triton_body([infer_input("a", a, "FP32", True)])
    with pytest.raises(V2Error, match=r"missing input\(s\) \['b'\]; model 'two' expects inputs"):
        parse(body, hlen, TWO_IN)


def test_optional_input_may_be_left_out():
    a = np.ones((2, 3), dtype=np.float32)
    b = np.array([5, 6], dtype=np.int64)
    body, hlen = triton_body(
        [infer_input("a", a, "FP32", True), infer_input("b", b, "INT64", False)]
    )
    req = parse(body, hlen, TWO_IN)
    assert sorted(req.inputs) == ["a", "b"]
    assert req.inputs["b"].tolist() == [5, 6]


def test_duplicate_input():
    x = digits(2)
    body, hlen = triton_body(
        [infer_input("images", x, "FP32", True), infer_input("images", x, "FP32", True)]
    )
    with pytest.raises(V2Error, match=r"input 'images' appears more than once"):
        parse(body, hlen)


@pytest.mark.parametrize(("dtype", "name"), [(np.int64, "INT64"), (np.float64, "FP64")])
def test_datatype_mismatch(dtype, name):
    body, hlen = triton_body([infer_input("images", digits(2).astype(dtype), name, True)])
    with pytest.raises(V2Error, match=rf"input 'images': expected datatype FP32, got {name}") as e:
        parse(body, hlen)
    assert e.value.status == 400


def test_shape_rank_mismatch():
    body, hlen = triton_body([infer_input("images", np.zeros((2, 8, 8), np.float32), "FP32", True)])
    with pytest.raises(
        V2Error,
        match=r"input 'images': expected shape \[-1, 1, 8, 8\] \(-1 = any\), got \[2, 8, 8\]",
    ):
        parse(body, hlen)


def test_shape_dim_mismatch():
    arr = np.zeros((2, 1, 8, 9), np.float32)
    body, hlen = triton_body([infer_input("images", arr, "FP32", False)])
    with pytest.raises(
        V2Error, match=r"expected shape \[-1, 1, 8, 8\] \(-1 = any\), got \[2, 1, 8, 9\]"
    ):
        parse(body, hlen)


def test_shape_not_integers():
    doc = json_doc([image_entry([0.0] * 128, shape=(2, 1, 8, "8"))])
    with pytest.raises(V2Error, match=r"'shape' must be a list of non-negative integers"):
        parse(doc, None)


def test_json_data_length_mismatch():
    with pytest.raises(V2Error, match=r"shape \[2, 1, 8, 8\] needs 128 elements, data has 127"):
        parse(json_doc([image_entry([0.5] * 127)]), None)


def test_json_data_wrong_element_type():
    with pytest.raises(V2Error, match=r"\(FP32\): JSON data must be numbers, got strings"):
        parse(json_doc([image_entry(["0.5"] * 128)]), None)


def test_json_data_ragged():
    ragged = [[0.0] * 64, [0.0] * 63]
    with pytest.raises(V2Error, match=r"must be a flat or regularly nested list of numbers"):
        parse(json_doc([image_entry(ragged)]), None)


def test_json_integer_out_of_range():
    sig = ModelSignature(
        name="i8",
        inputs=[TensorSpec(name="x", datatype="INT8", shape=[2])],
        outputs=[TensorSpec(name="y", datatype="INT8", shape=[2])],
    )
    doc = json_doc([{"name": "x", "datatype": "INT8", "shape": [2], "data": [1, 300]}])
    with pytest.raises(
        V2Error, match=r"values must lie in \[-128, 127\], got values in \[1, 300\]"
    ):
        parse(doc, None, sig)
    doc = json_doc([{"name": "x", "datatype": "INT8", "shape": [2], "data": [1, 2.5]}])
    with pytest.raises(V2Error, match=r"JSON data must be integers, got non-integer numbers"):
        parse(doc, None, sig)


def test_json_bytes_must_be_strings():
    doc = json_doc([{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", 3]}])
    with pytest.raises(
        V2Error, match=r"input 'text' \(BYTES\): JSON data must be strings, got int 3"
    ):
        parse(doc, None, TEXT)


def test_json_bytes_count_mismatch():
    doc = json_doc([{"name": "text", "datatype": "BYTES", "shape": [3], "data": [["a"], ["b"]]}])
    with pytest.raises(V2Error, match=r"shape \[3\] needs 3 elements, data has 2"):
        parse(doc, None, TEXT)


def test_binary_size_does_not_match_shape():
    # three images' bytes, declared as two images: binary_data_size 768 != 2 x 256
    body, hlen = digits_body(digits(3))
    header = json.loads(body[:hlen])
    header["inputs"][0]["shape"] = [2, 1, 8, 8]
    h = json.dumps(header).encode()
    with pytest.raises(
        V2Error,
        match=r"shape \[2, 1, 8, 8\] of FP32 takes 512 bytes \(128 x 4\), binary_data_size is 768",
    ):
        parse(h + body[hlen:], len(h))


def test_binary_truncated():
    body, hlen = digits_body(digits(2))
    assert len(body) - hlen == 512
    with pytest.raises(
        V2Error,
        match=r"binary_data_size 512 at binary offset 0 runs past the end of the body: only 502 bytes remain",
    ) as e:
        parse(body[:-10], hlen)
    assert e.value.status == 400
    assert "truncated" in e.value.message


def test_binary_leftover_bytes():
    body, hlen = digits_body(digits(2))
    with pytest.raises(
        V2Error,
        match=r"3 bytes left over after the last binary tensor: .* add up to 512 of the 515 bytes",
    ):
        parse(body + b"xyz", hlen)


def test_binary_data_size_without_header():
    body, hlen = digits_body(digits(1))
    header = body[:hlen]
    with pytest.raises(
        V2Error, match=r"binary_data_size but the request has no Inference-Header-Content-Length"
    ):
        parse(header, None)


@pytest.mark.parametrize("bad", ["abc", -1, 10**6])
def test_bad_header_length(bad):
    body, _ = digits_body(digits(1))
    with pytest.raises(V2Error, match=r"Inference-Header-Content-Length") as e:
        parse(body, bad)
    assert e.value.status == 400


def test_data_and_binary_both_given():
    doc = image_entry([0.0] * 128)
    doc["parameters"] = {"binary_data_size": 512}
    h = json_doc([doc])
    with pytest.raises(V2Error, match=r"has both 'data' and parameters.binary_data_size"):
        parse(h + bytes(512), len(h))


def test_neither_data_nor_binary():
    doc = json_doc([{"name": "images", "datatype": "FP32", "shape": [1, 1, 8, 8]}])
    with pytest.raises(V2Error, match=r"neither 'data' nor parameters.binary_data_size"):
        parse(doc, None)


def test_shared_memory_refused():
    inp = InferInput("images", [1, 1, 8, 8], "FP32")
    inp.set_shared_memory("region0", 256)
    body, hlen = triton_body([inp])
    with pytest.raises(V2Error, match=r"shared memory is not supported"):
        parse(body, hlen)


def test_binary_bytes_malformed():
    body, hlen = triton_body([infer_input("text", TEXTS, "BYTES", True)])
    header = json.loads(body[:hlen])
    blob = struct.pack("<I", 99) + b"short"
    header["inputs"][0]["parameters"]["binary_data_size"] = len(blob)
    h = json.dumps(header).encode()
    with pytest.raises(
        V2Error, match=r"input 'text': BYTES element 0 declares 99 bytes, only 5 bytes remain"
    ):
        parse(h + blob, len(h), TEXT)


def test_binary_bytes_count_mismatch():
    body, hlen = triton_body([infer_input("text", TEXTS, "BYTES", True)])
    header = json.loads(body[:hlen])
    header["inputs"][0]["shape"] = [5]
    h = json.dumps(header).encode()
    with pytest.raises(V2Error, match=r"input 'text': expected 5 BYTES elements, got 4"):
        parse(h + body[hlen:], len(h), TEXT)


def test_body_over_limit_is_413():
    body, hlen = digits_body(digits(8))
    with pytest.raises(
        V2Error, match=rf"request body is {len(body)} bytes; the limit is 1000 bytes"
    ) as e:
        parse(body, hlen, max_bytes=1000)
    assert e.value.status == 413


def test_decompressed_body_over_limit_is_413():
    body, hlen = digits_body(np.zeros((64, 1, 8, 8), np.float32))
    packed = gzip.compress(body)
    assert len(packed) < 4096 < len(body)
    with pytest.raises(V2Error, match=r"decompresses to more than 4096 bytes") as e:
        parse(packed, hlen, max_bytes=4096, content_encoding="gzip")
    assert e.value.status == 413


def test_unsupported_content_encoding():
    with pytest.raises(V2Error, match=r"unsupported Content-Encoding 'br'; expected gzip, deflate"):
        parse(b"{}", None, content_encoding="br")


def test_unknown_output_requested():
    body, hlen = digits_body(digits(1), outputs=[InferRequestedOutput("probs")])
    with pytest.raises(
        V2Error, match=r"unknown output 'probs'; model 'digits-cnn' has outputs \['logits'\]"
    ) as e:
        parse(body, hlen)
    assert e.value.status == 400


def test_classification_output_refused():
    body, hlen = digits_body(digits(1), outputs=[InferRequestedOutput("logits", class_count=3)])
    with pytest.raises(V2Error, match=r"classification is not supported"):
        parse(body, hlen)


def test_binary_data_flag_must_be_bool():
    doc = json_doc(
        [image_entry([0.0] * 64, shape=(1, 1, 8, 8))],
        outputs=[{"name": "logits", "parameters": {"binary_data": "yes"}}],
    )
    with pytest.raises(
        V2Error, match=r"output 'logits': binary_data must be true or false, got \"yes\""
    ):
        parse(doc, None)


def test_json_output_of_non_utf8_bytes():
    tokens = np.array([b"\xff"], dtype=object)
    with pytest.raises(V2Error, match=r"output 'tokens' holds bytes that are not UTF-8"):
        encode_infer_response("minilm", "1", None, {"tokens": tokens}, TEXT, {"tokens": False})


def test_encode_missing_output_is_a_server_error():
    with pytest.raises(ValueError, match=r"the model returned no output 'logits'"):
        encode_infer_response("digits-cnn", "1", None, {}, DIGITS, {"logits": True})


def test_mutated_bodies_only_raise_v2error():
    """Truncations and byte flips of real bodies: parsed or refused with a 4xx, nothing else."""
    rng = random.Random(0)
    bodies = [digits_body(digits(2)), triton_body([infer_input("text", TEXTS, "BYTES", True)])]
    outcomes = {"ok": 0, "refused": 0}
    for i in range(400):
        body, hlen = bodies[i % 2]
        sig = DIGITS if i % 2 == 0 else TEXT
        data = bytearray(body)
        if i % 3 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            parse(bytes(data), hlen, sig)
            outcomes["ok"] += 1
        except V2Error as e:
            assert e.status in (400, 413)
            outcomes["refused"] += 1
    assert outcomes["ok"] + outcomes["refused"] == 400
    assert outcomes["refused"] >= 100


# ------------------------------------------------------------------------------------------
# Text: lone UTF-16 surrogates (valid JSON escapes, no UTF-8 form) are refused where they are
# ------------------------------------------------------------------------------------------


def test_bytes_element_with_a_lone_surrogate_names_the_input_element_and_character():
    body = (
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], '
        b'"data": ["a\\udfffb", "", "%s%n"]}]}'
    )
    with pytest.raises(V2Error) as info:
        parse(body, None, TEXT)
    err = info.value
    assert err.status == 400
    assert "input 'text' (BYTES) element 0" in err.message, err.message
    assert "character 1" in err.message and "\\udfff" in err.message, err.message
    err.message.encode("utf-8")  # the message quotes the escape, never the surrogate


def test_nested_bytes_element_index_is_row_major():
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["x", "\udc00"]}]}
    with pytest.raises(V2Error, match=r"element 1 is not valid text: character 0"):
        parse(json.dumps(doc).encode(), None, TEXT)


def test_request_id_with_a_lone_surrogate_is_refused():
    doc = json_doc([image_entry(digits(1).ravel().tolist(), shape=(1, 1, 8, 8))], id="r\ud800")
    with pytest.raises(V2Error, match=r"'id' is not valid text: character 1"):
        parse(doc, None)


def test_surrogate_pairs_are_valid_text():
    body = (
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], '
        b'"data": ["\\ud83d\\ude00"]}]}'
    )
    req = parse(body, None, TEXT)
    assert req.inputs["text"].tolist() == ["\U0001f600".encode()]
