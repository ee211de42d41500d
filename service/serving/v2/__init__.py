"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) codec: pure functions, no web stack.

The service's HTTP handlers call these to turn a request body into numpy arrays and a result
back into a response body. Everything a client can get wrong raises :class:`V2Error` with an
HTTP status (400, 404 or 413) and a message that says what was expected and what arrived; any
other exception out of :func:`parse_infer_request` is a bug.

Wire format (what ``tritonclient.http`` speaks):

* JSON: ``{"id", "parameters", "inputs": [{"name", "datatype", "shape", "data"}], "outputs":
  [{"name", "parameters": {"binary_data": bool}}]}``; ``data`` is a flat or nested list, BYTES
  elements are strings.
* Binary tensor data extension: the ``Inference-Header-Content-Length`` header gives the length
  of the JSON header; the rest of the body is the inputs' raw bytes, concatenated in the order
  of the inputs that carry ``parameters.binary_data_size``. Numbers are little-endian, row-major;
  a BYTES element is a 4-byte little-endian length followed by its bytes.
  ``tritonclient.http`` sends such a body with *no* Content-Type, so the codec never relies on
  it. Responses use the same framing (header + ``binary_data_size`` per binary output).

Modules: :mod:`.schema` (datatypes, errors, model signatures, the BYTES wire format),
:mod:`.request` (parsing: the request's fields, inputs against the signature, outputs), with
:mod:`.encoding` (Content-Encoding), :mod:`.binary` (the binary tensor data extension),
:mod:`.json_data` (the JSON document and ``data`` lists), :mod:`.values` (checks both kinds of
data pass) and :mod:`.text` (client text is valid Unicode); :mod:`.response` (encoding).
Everything public is re-exported here.
"""

from service.serving.v2.request import InferRequest, parse_infer_request
from service.serving.v2.response import encode_infer_response
from service.serving.v2.schema import (
    DATATYPES,
    HEADER_LENGTH,
    ModelSignature,
    TensorSpec,
    V2Error,
    check_version,
    deserialize_bytes,
    error_body,
    model_not_found,
    serialize_bytes,
    server_metadata,
)
from service.serving.v2.text import check_text

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "ModelSignature",
    "TensorSpec",
    "V2Error",
    "check_text",
    "check_version",
    "deserialize_bytes",
    "encode_infer_response",
    "error_body",
    "model_not_found",
    "parse_infer_request",
    "serialize_bytes",
    "server_metadata",
]
