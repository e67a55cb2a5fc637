# The DICOM node (python -m dicom_node): takes images from a PACS by C-STORE or STOW-RS, asks the
# gateway's compare endpoint and files the reports back into the PACS. It needs no TensorFlow, no
# Flask and no model repository: only its slice of the lock (requirements-dicom-node.txt) and the
# packages it imports (components.core, components.imaging, dicom_node).
# The base image by digest, so a rebuild gets the same bytes whatever the tag points to now
# (refresh: docs/deployment.md#base-images).
FROM python:3.11.7-slim@sha256:637774748f62b832dc11e7b286e48cd716727ed04b45a0322776c01bc526afc3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-dicom-node.txt ./
RUN python -m pip install --no-cache-dir -r requirements-dicom-node.txt

COPY components/__init__.py components/
COPY components/core/ components/core/
COPY components/imaging/ components/imaging/
COPY dicom_node/ dicom_node/

USER 1000
EXPOSE 11112 8090
# SIGTERM: it stops receiving, reports on every study it holds, then exits.
ENTRYPOINT ["python", "-m", "dicom_node"]
