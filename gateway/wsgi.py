"""The gateway as a WSGI application (`gateway.wsgi:app`) for any WSGI server, configured from the
environment (a container's configuration); `python -m gateway` serves the same app on waitress."""
import os
from pathlib import Path

from gateway.app import GatewayConfig, create_app

app = create_app(GatewayConfig(
    model_repo=Path(os.environ.get("MODEL_REPO", "/models")),
    serving=os.environ.get("SERVING_ADDRESS", "tf-serving:8500"),
    max_upload_bytes=int(os.environ.get("MAX_UPLOAD_BYTES", 48 * 1024 * 1024)),
    deadline_s=float(os.environ.get("PREDICT_DEADLINE_S", 5.0)),
))
