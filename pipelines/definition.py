"""One Kubeflow pipeline per modality, and one cross-validation pipeline per configuration:

    extract (one or more sources) -> split -> [stain-normalize: histopathology] -> validate -> baselines
        -> train x6 -> evaluate x6 (and save the serving graph) -> ensemble per cohort (3 evaluations
        gathered) -> export x6 (the graph and its card)
        -> challenge x6 (the stable version on the same test records) -> push x6 (blessed by evidence)

    extract -> folds -> per fold: select -> [stain-normalize] -> train -> evaluate
        -> gather the folds' evaluations -> pool (out-of-fold evaluation)

Every step is a process of its own, and a process with TensorFlow costs seconds before it does
anything (import, model load). Between its training and its push a model costs one: the
evaluate step also saves the serving graph of the model it has just scored, and the export
step, which must wait for the cohort ensemble its card names, only copies that graph and writes
the card. (The push loads the export once more to verify it; the challenge loads the stable
version when there is one.)

Validation runs on the splits rather than before them: its drift and skew checks compare train
with test, and a split that lost a class is exactly what it must catch before training.

The six training branches are written out with a Python loop when the pipeline is defined:
kfp 2.13's local runner runs neither ``dsl.ParallelFor`` nor ``dsl.Condition``, and a loop gives
every model its own named task in the UI. A step that takes a variable number of evaluations
(the cohort ensemble, the out-of-fold pool) reads them from one folder that a chain of
``gather`` steps fills, one evaluation each (the local runner has no ``dsl.Collected`` and no
optional inputs). Pushes run one after another (each rewrites ``models.config``); the push step
itself skips an unblessed model and records why.
"""
# no "from __future__ import annotations": KFP reads the pipeline function's annotations as types
from kfp import dsl, kubernetes

from components.core import catalog, phi
from components import crossval
from pipelines import ops
from pipelines.settings import RunSettings

DEFAULT_IMAGE = "ghcr.io/bcimaging/components:0.1.0"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DATA_MOUNT, MODELS_MOUNT = "/data", "/models"
PHI_KEY_MOUNT = "/secrets/phi"      # the Secret's key "key" is the file PHI_KEY_MOUNT/key
STEP_RESOURCES = {"cpu": "2", "memory": "8G"}
TRAIN_RESOURCES = {"cpu": "4", "memory": "16G"}
DEFAULTS = RunSettings()     # the pipeline parameters' defaults: one declaration (components.train)


def pipeline_name(modality: str) -> str:
    return f"bcimaging-{modality}"


def cv_pipeline_name(modality: str) -> str:
    return f"bcimaging-{modality}-cv"


def _check_fanout(backbones, strategies) -> None:
    unknown = [b for b in backbones if b not in catalog.BACKBONES] + [s for s in strategies if s not in catalog.STRATEGIES]
    if unknown or not backbones or not strategies:
        raise ValueError(f"unknown or missing backbones/strategies {unknown}; choose from "
                         f"{list(catalog.BACKBONES)} and {list(catalog.STRATEGIES)}")


def _gathered(evaluations: list, image, cache_dir):
    """One folder holding every evaluation in ``evaluations``, a gather step each."""
    collected = None
    for evaluation in evaluations:
        task = (ops.gather_first(cache_dir=cache_dir, evaluation=evaluation) if collected is None
                else ops.gather(cache_dir=cache_dir, previous=collected, evaluation=evaluation))
        collected = _on_image(task, image, STEP_RESOURCES).set_display_name("gather").outputs["collected"]
    return collected


def _train(modality, backbone, strategy, training, cache_dir, splits, image, accelerator_type, accelerator_limit,
           gpu_node_selector, gpu_toleration, label: str):
    train = ops.train(modality=modality, backbone=backbone, strategy=strategy, training=training,
                      cache_dir=cache_dir, splits=splits)
    _on_image(train, image, TRAIN_RESOURCES).set_display_name(f"train {label}")
    train.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_limit)
    kubernetes.add_node_selector_json(train, gpu_node_selector)
    kubernetes.add_toleration_json(train, gpu_toleration)
    return train


def _with_phi_key(extract, secret_name):
    """The PHI key for extract's DICOM pseudonyms: the Secret ``secret_name`` mounted as a file,
    and the environment naming that file (``components.core.phi``), never the key itself, which
    would show in the pod's spec. Optional: a run of public, non-DICOM data needs no key, and a
    DICOM run without it fails in extract saying the key file is missing. The local runner
    ignores both (it keeps this machine's environment)."""
    kubernetes.use_secret_as_volume(extract, secret_name=secret_name, mount_path=PHI_KEY_MOUNT, optional=True)
    return extract.set_env_variable(phi.KEY_FILE_ENV, f"{PHI_KEY_MOUNT}/key")


def _on_image(task, image, resources: dict, cache: bool = True):
    task.set_container_image(image).set_cpu_request(resources["cpu"]).set_memory_request(resources["memory"])
    return task.set_caching_options(cache)


def build(modality: str, backbones=catalog.BACKBONES, strategies=catalog.STRATEGIES):
    """The pipeline function for one modality, training ``backbones`` x ``strategies``."""
    spec = catalog.modality(modality)
    _check_fanout(backbones, strategies)

    @dsl.pipeline(name=pipeline_name(modality),
                  description=f"{spec.name}: extract, split, validate, train {len(backbones) * len(strategies)} "
                              "models, evaluate, ensemble each cohort, export, push the blessed ones")
    def pipeline(sources: list, model_repo: str = MODELS_MOUNT, image: str = DEFAULT_IMAGE,
                 training: dict = DEFAULTS.training(), split_seed: int = DEFAULTS.split_seed,
                 min_f1: float = DEFAULTS.min_f1, collapse_sd: float = DEFAULTS.collapse_sd,
                 bootstrap: int = DEFAULTS.bootstrap, max_quarantine: float = DEFAULTS.max_quarantine,
                 keep_versions: int = DEFAULTS.keep_versions,
                 noninferiority_margin: float = DEFAULTS.noninferiority_margin, cache_dir: str = "",
                 accelerator_type: str = "nvidia.com/gpu", accelerator_limit: int = 1,
                 gpu_node_selector: dict = GPU_NODE_SELECTOR, gpu_toleration: dict = GPU_TOLERATION,
                 data_pvc: str = "bcimaging-data", model_repo_pvc: str = "model-repository",
                 phi_key_secret: str = "phi-key"):
        extract = _on_image(ops.extract(modality=modality, sources=sources, max_quarantine=max_quarantine,
                                        cache_dir=cache_dir), image, STEP_RESOURCES)
        kubernetes.mount_pvc(extract, pvc_name=data_pvc, mount_path=DATA_MOUNT)
        _with_phi_key(extract, phi_key_secret)
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
        for strategy in strategies:
            trained = {}
            for backbone in backbones:
                name = catalog.model_name(modality, backbone, strategy)
                train = _train(modality, backbone, strategy, training, cache_dir, train_input, image, accelerator_type,
                               accelerator_limit, gpu_node_selector, gpu_toleration, name).after(validate)
                evaluate = _on_image(ops.evaluate(min_f1=min_f1, collapse_sd=collapse_sd, bootstrap=bootstrap,
                                                  seed=split_seed, cache_dir=cache_dir, model=train.outputs["model"],
                                                  splits=train_input),
                                     image, STEP_RESOURCES).set_display_name(f"evaluate {name}")
                trained[name] = (train, evaluate)
            # the cohort's ensemble, evaluated like a model; every member's card names it
            ensemble = _on_image(ops.ensemble(min_f1=min_f1, collapse_sd=collapse_sd, bootstrap=bootstrap, seed=split_seed, cache_dir=cache_dir,
                                              collected=_gathered([e.outputs["evaluation"] for _, e in trained.values()],
                                                                  image, cache_dir)),
                                 image, STEP_RESOURCES).set_display_name(f"ensemble {modality} {strategy}")
            for name, (train, evaluate) in trained.items():
                export = _on_image(ops.export(cache_dir=cache_dir, model=train.outputs["model"],
                                              evaluation=evaluate.outputs["evaluation"],
                                              graph=evaluate.outputs["graph"],
                                              ensemble=ensemble.outputs["evaluation"]),
                                   image, STEP_RESOURCES).set_display_name(f"export {name}")
                # champion and challenger: not cached, its answer depends on the repository now. The
                # served champion takes the images a client sends (it stain-normalizes in its own
                # graph), so it reads the split before stain normalization: the same records, by id
                challenge = _on_image(ops.challenge(model_repo=model_repo, margin=noninferiority_margin,
                                                    bootstrap=bootstrap, seed=split_seed,
                                                    evaluation=evaluate.outputs["evaluation"],
                                                    splits=splits.outputs["splits"]),
                                      image, STEP_RESOURCES, cache=False).set_display_name(f"challenge {name}")
                kubernetes.mount_pvc(challenge, pvc_name=model_repo_pvc, mount_path=MODELS_MOUNT)
                push = _on_image(ops.push(model_repo=model_repo, keep=keep_versions,
                                          saved_model=export.outputs["saved_model"],
                                          evaluation=evaluate.outputs["evaluation"],
                                          blessing=challenge.outputs["blessing"]),
                                 image, STEP_RESOURCES, cache=False).set_display_name(f"push {name}")
                kubernetes.mount_pvc(push, pvc_name=model_repo_pvc, mount_path=MODELS_MOUNT)
                if previous_push is not None:
                    challenge.after(previous_push)     # each challenger meets the stable version of now
                    push.after(previous_push)
                previous_push = push

    return pipeline


def build_cv(modality: str, backbone: str, strategy: str, folds: int = crossval.DEFAULT_FOLDS):
    """Patient-level ``folds``-fold cross-validation of one configuration: every patient tested
    once, out of fold; nothing is pushed (the served models come from the modality's pipeline)."""
    spec = catalog.modality(modality)
    _check_fanout([backbone], [strategy])
    name = catalog.model_name(modality, backbone, strategy)

    @dsl.pipeline(name=cv_pipeline_name(modality),
                  description=f"{name}: {folds}-fold patient-level cross-validation, out-of-fold evaluation")
    def pipeline(sources: list, image: str = DEFAULT_IMAGE, training: dict = DEFAULTS.training(),
                 split_seed: int = DEFAULTS.split_seed, min_f1: float = DEFAULTS.min_f1,
                 collapse_sd: float = DEFAULTS.collapse_sd, bootstrap: int = DEFAULTS.bootstrap,
                 max_quarantine: float = DEFAULTS.max_quarantine, cache_dir: str = "", accelerator_type: str = "nvidia.com/gpu", accelerator_limit: int = 1,
                 gpu_node_selector: dict = GPU_NODE_SELECTOR, gpu_toleration: dict = GPU_TOLERATION,
                 data_pvc: str = "bcimaging-data", phi_key_secret: str = "phi-key"):
        extract = _on_image(ops.extract(modality=modality, sources=sources, max_quarantine=max_quarantine,
                                        cache_dir=cache_dir), image, STEP_RESOURCES)
        kubernetes.mount_pvc(extract, pvc_name=data_pvc, mount_path=DATA_MOUNT)
        _with_phi_key(extract, phi_key_secret)
        made = _on_image(ops.folds(k=folds, seed=split_seed, cache_dir=cache_dir,
                                   examples=extract.outputs["examples"]), image, STEP_RESOURCES)
        evaluations = []
        for i in range(folds):
            fold = _on_image(ops.select_fold(index=i, cache_dir=cache_dir, folds=made.outputs["folds"]),
                             image, STEP_RESOURCES).set_display_name(f"fold {i}")
            fold_input = fold.outputs["splits"]
            if spec.stain_normalization:
                fold_input = _on_image(ops.stain_normalize(seed=split_seed, cache_dir=cache_dir, splits=fold_input),
                                       image, STEP_RESOURCES).set_display_name(f"stain-normalize fold {i}").outputs["normalized"]
            train = _train(modality, backbone, strategy, training, cache_dir, fold_input, image, accelerator_type,
                           accelerator_limit, gpu_node_selector, gpu_toleration, f"{name} fold {i}")
            evaluate = _on_image(ops.evaluate_fold(min_f1=min_f1, collapse_sd=collapse_sd, bootstrap=bootstrap,
                                              seed=split_seed, cache_dir=cache_dir, model=train.outputs["model"],
                                              splits=fold_input),
                                 image, STEP_RESOURCES).set_display_name(f"evaluate {name} fold {i}")
            evaluations.append(evaluate.outputs["evaluation"])
        _on_image(ops.pool(bootstrap=bootstrap, seed=split_seed, cache_dir=cache_dir,
                           collected=_gathered(evaluations, image, cache_dir)),
                  image, STEP_RESOURCES).set_display_name(f"pool {name} out-of-fold")

    return pipeline


def compile_to(modality: str, path: str, **fanout) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build(modality, **fanout), package_path=str(path))
    return str(path)


def compile_cv_to(modality: str, path: str, backbone: str, strategy: str, folds: int = crossval.DEFAULT_FOLDS) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_cv(modality, backbone, strategy, folds), package_path=str(path))
    return str(path)
