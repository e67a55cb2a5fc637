"""gunicorn entry point: settings from the environment (the container's configuration)."""
import os
from pathlib import Path

from gateway.app import GatewayConfig, create_app

app = create_app(GatewayConfig(
    model_repo=Path(os.environ.get("MODEL_REPO", "/models")),
    serving=os.environ.get("SERVING_ADDRESS", "tf-serving:8500"),
    max_upload_bytes=int(os.environ.get("MAX_UPLOAD_BYTES", 48 * 1024 * 1024)),
    deadline_s=float(os.environ.get("PREDICT_DEADLINE_S", 5.0)),
))
