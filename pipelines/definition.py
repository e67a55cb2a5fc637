"""One Kubeflow pipeline per modality:

    extract -> split -> [stain-normalize: histopathology] -> validate -> baselines
                                                               -> train x6 -> evaluate x6 -> export x6
                                                               -> push x6 (blessed only, one at a time)

Validation runs on the splits rather than before them: its drift and skew checks compare train
with test, and a split that lost a class is exactly what it must catch before training.

The six training branches are written out with a Python loop when the pipeline is defined:
kfp 2.13's local runner runs neither ``dsl.ParallelFor`` nor ``dsl.Condition``, and a loop gives
every model its own named task in the UI. Pushes run one after another (each rewrites
``models.config``); the push step itself skips an unblessed model and records why.
"""
# no "from __future__ import annotations": KFP reads the pipeline function's annotations as types
from kfp import dsl, kubernetes

from components import catalog
from pipelines import ops
from pipelines.settings import RunSettings

DEFAULT_IMAGE = "ghcr.io/bcimaging/components:0.1.0"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DATA_MOUNT, MODELS_MOUNT = "/data", "/models"
STEP_RESOURCES = {"cpu": "2", "memory": "8G"}
TRAIN_RESOURCES = {"cpu": "4", "memory": "16G"}
DEFAULTS = RunSettings()     # the pipeline parameters' defaults: one declaration (components.train)


def pipeline_name(modality: str) -> str:
    return f"bcimaging-{modality}"


def _on_image(task, image, resources: dict, cache: bool = True):
    task.set_container_image(image).set_cpu_request(resources["cpu"]).set_memory_request(resources["memory"])
    return task.set_caching_options(cache)


def build(modality: str, backbones=catalog.BACKBONES, strategies=catalog.STRATEGIES):
    """The pipeline function for one modality, training ``backbones`` x ``strategies``."""
    spec = catalog.modality(modality)
    unknown = [b for b in backbones if b not in catalog.BACKBONES] + [s for s in strategies if s not in catalog.STRATEGIES]
    if unknown or not backbones or not strategies:
        raise ValueError(f"unknown or missing backbones/strategies {unknown}; choose from "
                         f"{list(catalog.BACKBONES)} and {list(catalog.STRATEGIES)}")

    @dsl.pipeline(name=pipeline_name(modality),
                  description=f"{spec.name}: extract, split, validate, train {len(backbones) * len(strategies)} "
                              "models, evaluate, export, push the blessed ones")
    def pipeline(source: str, model_repo: str = MODELS_MOUNT, image: str = DEFAULT_IMAGE,
                 training: dict = DEFAULTS.training(), split_seed: int = DEFAULTS.split_seed,
                 min_f1: float = DEFAULTS.min_f1, bootstrap: int = DEFAULTS.bootstrap,
                 max_quarantine: float = DEFAULTS.max_quarantine, keep_versions: int = DEFAULTS.keep_versions,
                 cache_dir: str = "",
                 accelerator_type: str = "nvidia.com/gpu", accelerator_limit: int = 1,
                 gpu_node_selector: dict = GPU_NODE_SELECTOR, gpu_toleration: dict = GPU_TOLERATION,
                 data_pvc: str = "bcimaging-data", model_repo_pvc: str = "model-repository"):
        extract = _on_image(ops.extract(modality=modality, source=source, max_quarantine=max_quarantine,
                                        cache_dir=cache_dir), image, STEP_RESOURCES)
        kubernetes.mount_pvc(extract, pvc_name=data_pvc, mount_path=DATA_MOUNT)
        splits = _on_image(ops.split(seed=split_seed, cache_dir=cache_dir, examples=extract.outputs["examples"]),
                           image, STEP_RESOURCES)
        train_input = splits.outputs["splits"]
        if spec.stain_normalization:
            stain = _on_image(ops.stain_normalize(seed=split_seed, cache_dir=cache_dir, splits=train_input),
                              image, STEP_RESOURCES)
            train_input = stain.outputs["normalized"]
        validate = _on_image(ops.validate(cache_dir=cache_dir, splits=train_input), image, STEP_RESOURCES)
        _on_image(ops.baselines(modality=modality, bootstrap=bootstrap, seed=split_seed, cache_dir=cache_dir,
                                splits=train_input).after(validate), image, STEP_RESOURCES)

        previous_push = None
        for backbone in backbones:
            for strategy in strategies:
                name = catalog.model_name(modality, backbone, strategy)
                train = ops.train(modality=modality, backbone=backbone, strategy=strategy, training=training,
                                  cache_dir=cache_dir, splits=train_input).after(validate)
                _on_image(train, image, TRAIN_RESOURCES).set_display_name(f"train {name}")
                train.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_limit)
                kubernetes.add_node_selector_json(train, gpu_node_selector)
                kubernetes.add_toleration_json(train, gpu_toleration)
                evaluate = _on_image(ops.evaluate(min_f1=min_f1, bootstrap=bootstrap, seed=split_seed, cache_dir=cache_dir,
                                                  model=train.outputs["model"], splits=train_input),
                                     image, STEP_RESOURCES).set_display_name(f"evaluate {name}")
                export = _on_image(ops.export(cache_dir=cache_dir, model=train.outputs["model"],
                                              evaluation=evaluate.outputs["evaluation"]),
                                   image, STEP_RESOURCES).set_display_name(f"export {name}")
                push = _on_image(ops.push(model_repo=model_repo, keep=keep_versions,
                                          saved_model=export.outputs["saved_model"],
                                          evaluation=evaluate.outputs["evaluation"]),
                                 image, STEP_RESOURCES, cache=False).set_display_name(f"push {name}")
                kubernetes.mount_pvc(push, pvc_name=model_repo_pvc, mount_path=MODELS_MOUNT)
                if previous_push is not None:
                    push.after(previous_push)
                previous_push = push

    return pipeline


def compile_to(modality: str, path: str, **fanout) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build(modality, **fanout), package_path=str(path))
    return str(path)
