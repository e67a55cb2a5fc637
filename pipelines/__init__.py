"""Kubeflow Pipelines v2 definitions (one pipeline per modality), the local runner and its step
cache, submission to a cluster, the run audit, the real-data study and drift monitoring."""
