# Gateway: the Flask app on waitress (python -m gateway). It talks to TensorFlow Serving over
# gRPC with TF Serving's own messages (serving/tensorflow_serving.binpb) and reads model cards
# from the model repository (mounted read-only at /models). It needs no TensorFlow: only the
# gateway's slice of the lock (requirements-gateway.txt) is installed.
# The base image by digest, so a rebuild gets the same bytes whatever the tag points to now
# (refresh: docs/deployment.md#base-images).
FROM python:3.11.7-slim@sha256:637774748f62b832dc11e7b286e48cd716727ed04b45a0322776c01bc526afc3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_REPO=/models \
    SERVING_ADDRESS=tf-serving:8500 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app
COPY requirements-gateway.txt ./
RUN python -m pip install --no-cache-dir -r requirements-gateway.txt

COPY pyproject.toml setup.py ./
COPY components/ components/
COPY serving/ serving/
COPY gateway/ gateway/
RUN python -m pip install --no-cache-dir --no-deps .

USER 1000
EXPOSE 8080
# SIGTERM: /readyz answers 503 for --drain-delay seconds, requests in flight finish, then exit
# (the pod's terminationGracePeriodSeconds covers both).
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8080", "--threads", "8", \
     "--connection-limit", "256", "--drain-delay", "5", "--drain-timeout", "25"]
