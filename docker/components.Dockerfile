# Component image: every pipeline step (extract, split, stain, validate, train, evaluate, export,
# push) runs in this image, as KFP's `python -m kfp.dsl.executor_main` calling pipelines.steps
# (kfp is in the lock, so nothing is installed at run time), or by hand as
# `python -m components.<step>`. Its tag is the pipelines' `image` parameter. The GPU base image
# carries CUDA/cuDNN for the training steps; the same image runs the CPU steps.
# Not yet pinned by digest: no digest of this tag could be recorded here; pin it as
# docs/deployment.md#base-images says before a release build.
FROM tensorflow/tensorflow:2.16.2-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (the lock changes less often than the code), pinned by the lock.
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml setup.py ./
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/
RUN python -m pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 1000 pipeline

USER 1000
ENTRYPOINT ["python", "-m"]
CMD ["components.extract", "--help"]
