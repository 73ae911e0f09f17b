"""Kiln's inference server: one verified model version over the Open Inference Protocol (V2) and KServe V1.

    python -m kiln_server --model s3://bucket/models/iris/v3 --name iris --port 8080

Modules: config (flags and env), artifacts (download and sha256 checks before any
deserialisation), runtimes (ONNX Runtime, scikit-learn; warm-up), schema (features in,
outputs out), decode (request payloads -> arrays), protocol (response bodies), batching
(micro-batches when requests queue), metrics (Prometheus), app (the raw ASGI app).
"""
