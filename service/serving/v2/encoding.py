"""``Content-Encoding`` of a request body (gzip or deflate, as tritonclient compresses)."""

from __future__ import annotations

import zlib

from service.serving.v2.schema import V2Error


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """``body`` with ``encoding`` undone; never more than ``max_bytes`` come out (413 beyond:
    a small body may inflate to any size, so the limit applies to both)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS  # HTTP "deflate" is the zlib format (what tritonclient sends)
    else:
        raise V2Error(
            f"unsupported Content-Encoding '{encoding}'; expected gzip, deflate or identity"
        )
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise V2Error(f"request body is not valid {enc} data: {e}") from None
    if len(out) > max_bytes:
        raise V2Error(
            f"request body decompresses to more than {max_bytes} bytes; "
            f"the limit is {max_bytes} bytes",
            413,
        )
    if not d.eof:
        raise V2Error(f"request body is truncated {enc} data")
    return out
