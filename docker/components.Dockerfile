# Component image: every pipeline step (extract, validate, split, stain, train, evaluate, export)
# runs `python -m components.<step>` in this image. The GPU base image carries CUDA/cuDNN for
# the training steps; the same image runs the CPU steps.
FROM tensorflow/tensorflow:2.16.2-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (the lock changes less often than the code), pinned by the lock.
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

COPY setup.py ./
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/
RUN python -m pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 1000 pipeline

USER 1000
ENTRYPOINT ["python", "-m"]
CMD ["components.extract", "--help"]
