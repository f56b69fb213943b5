"""The server: the Open Inference Protocol v2 over HTTP (JSON and binary tensors) and gRPC,
endpoints for people under /v1, Prometheus metrics; `ctrlgan serve` runs it.

    app = ctrlgan.serve.create_app(["digits"])   # the ASGI app, to embed in another server

It imports the runtime, never training. Its dependencies are the ``serve`` extra
(``pip install ctrlgan[serve]``): uvicorn[standard], grpcio, protobuf, prometheus-client.
"""

from ctrlgan.serve.app import App, create_app

__all__ = ["App", "create_app"]
