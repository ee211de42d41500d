"""The forms a structure is served in: precision (float16/bfloat16/int8, smoothing), sparsity
masks and their compact storage, packed tokens (length buckets) and ONNX Runtime. Each module
builds and runs a form; the search steps that choose among them live in ``compression.search``."""
