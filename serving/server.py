"""An embedded model server that speaks TensorFlow Serving's gRPC API, for one machine.

``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus), and with ``rest_port`` TF Serving's REST API (``serving.protocol.rest_api``), with TF Serving's status codes: NOT_FOUND for an unknown model, version or
label, INVALID_ARGUMENT for bad input. It serves the versions ``models.config`` names (or the
newest of each model when there is none), loads and warms every one at start (replaying
``assets.extra/tf_serving_warmup_requests`` as TF Serving does), polls the repository for new
versions, and batches concurrent requests to the same model (``batching.config``: max batch
size, timeout). The gateway cannot tell it from the real server; on a cluster the official
``tensorflow/serving`` image reads the same repository.

With ``tls`` the gRPC port speaks only TLS, and requires a client certificate from ``tls.ca``
when that is given (mutual TLS, as TF Serving's ``--ssl_config_file`` with
``client_verify: true``).

    python -m serving serve --model-repo DIR --port 8500 [--rest-port 8501] [--tls-cert C --tls-key K [--tls-ca CA]]
"""
from __future__ import annotations

import logging
import threading
from concurrent import futures
from pathlib import Path

import grpc

from components.core.tls import TLSFiles
from serving.protocol.grpc_api import servicers
from serving.store import ModelStore

log = logging.getLogger("serving")


class Server:
    """A running embedded server: ``stop()`` ends it (the gRPC port closes)."""

    def __init__(self, root: str | Path, port: int = 8500, host: str = "127.0.0.1", poll_seconds: float = 2.0,
                 batching: bool = True, workers: int = 64, retry_s: float = 2.0, rest_port: int | None = None,
                 tls: TLSFiles | None = None):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.store = ModelStore(root, batching, retry_s=retry_s)
        self.store.refresh()
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                options=[("grpc.max_receive_message_length", 64 << 20),
                                         ("grpc.max_send_message_length", 64 << 20)])
        prediction, models = servicers(self.store)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, self.grpc)
        if tls:                            # TF Serving's --ssl_config_file: server key, cert, client CA
            cert, key, ca = tls.read()
            credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                      require_client_auth=ca is not None)
            self.port = self.grpc.add_secure_port(f"{host}:{port}", credentials)
        else:
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port} (in use?)")
        self.grpc.start()
        self.rest, self.rest_port = None, None
        if rest_port is not None:          # TF Serving's REST API (--rest_api_port), same store
            from werkzeug.serving import make_server

            from serving.protocol.rest_api import RestApp

            self.rest = make_server(host, rest_port, RestApp(self.store), threaded=True)
            self.rest_port = self.rest.server_port
            threading.Thread(target=self.rest.serve_forever, daemon=True).start()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, args=(poll_seconds,), daemon=True)
        self._poller.start()

    def _poll(self, seconds: float):
        while not self._stop.wait(seconds):
            try:
                self.store.refresh()
            except Exception as e:            # keep serving what is loaded
                log.error("repository poll failed: %s", e)

    def stop(self, grace: float = 0.5):
        self._stop.set()
        self._poller.join(60.0)      # a poll in flight would otherwise load versions after the stop
        if self.rest:
            self.rest.shutdown()
        self.grpc.stop(grace).wait()
        self.store.stop()

    def wait(self):
        self.grpc.wait_for_termination()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a server started as a process)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
