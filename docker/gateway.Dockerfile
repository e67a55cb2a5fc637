# Gateway: Flask app under gunicorn. It talks to TensorFlow Serving over gRPC and reads model
# cards from the model repository (mounted read-only at /models).
FROM python:3.11.7-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_REPO=/models \
    SERVING_ADDRESS=tf-serving:8500

WORKDIR /app
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

COPY setup.py ./
COPY components/ components/
COPY serving/ serving/
COPY gateway/ gateway/
COPY pipelines/ pipelines/
RUN python -m pip install --no-cache-dir --no-deps .

USER 1000
EXPOSE 8080
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--workers", "2", "--threads", "8", "--timeout", "30", "gateway.wsgi:app"]
