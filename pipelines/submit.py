"""Submit one modality's pipeline to a Kubeflow Pipelines cluster and return the run's URL.

On the cluster the dataset comes from the data PVC (mounted at /data in the extract step), the
blessed models go to the model-repository PVC that TensorFlow Serving reads (mounted at
/models in the push steps), training lands on GPU nodes, and KFP's own caching and metadata
store (MLMD) play the part that the step cache and ``manifest.json`` play in local runs.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from components.core import cli
from pipelines import definition


def arguments(data: str, settings, image: str | None, data_pvc: str, model_repo_pvc: str,
              accelerator_type: str, accelerator_limit: int) -> dict:
    """``data``: a dataset path as the pods see it, or a local sources JSON file whose paths are."""
    from components.data import sources

    # a sources file's paths are the pods' paths: taken as written, not resolved here
    chosen = sources.parse(json.loads(Path(data).read_text())) if data.endswith(".json") else None
    paths = [s.path for s in chosen] if chosen else [data]
    relative = [p for p in paths if not p.startswith("/")]
    if relative:
        raise cli.UserError(f"--data {relative[0]!r} must be an absolute path as the pods see it, e.g. "
                            f"{definition.DATA_MOUNT}/busi (the data PVC is mounted at {definition.DATA_MOUNT})")
    chosen = chosen or [sources.single(Path(data))]
    if settings.weights not in ("imagenet", "none") and not settings.weights.startswith("/"):
        raise cli.UserError("--weights must be imagenet, none, or an absolute path inside the component image")
    args = {**settings.arguments(), "sources": [s.to_dict() for s in chosen], "model_repo": definition.MODELS_MOUNT,
            "data_pvc": data_pvc,
            "model_repo_pvc": model_repo_pvc, "accelerator_type": accelerator_type,
            "accelerator_limit": accelerator_limit}
    if image:
        args["image"] = image
    return args


def submit(host: str, modality: str, data: str, settings, *, image: str | None = None, experiment: str = "bcimaging",
           namespace: str | None = None, data_pvc: str = "bcimaging-data", model_repo_pvc: str = "model-repository",
           accelerator_type: str = "nvidia.com/gpu", accelerator_limit: int = 1) -> str:
    import kfp

    run_arguments = arguments(data, settings, image, data_pvc, model_repo_pvc, accelerator_type, accelerator_limit)
    with tempfile.TemporaryDirectory() as tmp:
        package = definition.compile_to(modality, Path(tmp) / "pipeline.yaml", backbones=tuple(settings.backbones),
                                        strategies=tuple(settings.strategies))
        try:
            client = kfp.Client(host=host, namespace=namespace)
            result = client.create_run_from_pipeline_package(
                package, arguments=run_arguments, experiment_name=experiment,
                run_name=f"{definition.pipeline_name(modality)}-{settings.image_size}px-{settings.epochs}ep",
                namespace=namespace)
        except Exception as e:        # connection refused, auth, API errors: all say the same to the user
            raise cli.UserError(f"could not submit to {host}: {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
                                "Check --host (the KFP API endpoint) and your credentials") from None
    return f"{host.rstrip('/')}/#/runs/details/{result.run_id}"
