"""The KFP v2 components: typed artifacts in and out, each body one call into ``pipelines.steps``.

KFP ships a component's function source to the container and runs it there, so each body
imports what it needs. The image named here is a placeholder: the pipeline sets every task's
image from its ``image`` parameter (``PipelineTask.set_container_image``). The image already
holds kfp and this package, so nothing is pip-installed at run time.
"""
from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

PLACEHOLDER_IMAGE = "bcimaging/components:set-by-the-image-parameter"


def component(fn):
    return dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)(fn)


@component
def extract(modality: str, sources: list, max_quarantine: float, cache_dir: str,
            examples: Output[Dataset], report: Output[Markdown]):
    """One or more sources' images -> sharded TFRecords of the project schema (Apache Beam); bad inputs quarantined."""
    from pipelines import steps
    steps.extract(modality, sources, max_quarantine, cache_dir, examples, report)


@component
def split(seed: int, cache_dir: str, examples: Input[Dataset], splits: Output[Dataset], report: Output[Markdown]):
    """70/15/15, stratified by label, grouped by patient; a manifest with hashes."""
    from pipelines import steps
    steps.split(seed, cache_dir, examples, splits, report)


@component
def stain_normalize(seed: int, cache_dir: str, splits: Input[Dataset], normalized: Output[Dataset],
                    report: Output[Markdown]):
    """Macenko stain normalization, reference fitted on the train tiles."""
    from pipelines import steps
    steps.stain(seed, cache_dir, splits, normalized, report)


@component
def validate(cache_dir: str, splits: Input[Dataset], validation: Output[Artifact], report: Output[Markdown]):
    """TFDV statistics, schema, anomalies and train/test drift; fails on anomalies that void training."""
    from pipelines import steps
    steps.validate(cache_dir, splits, validation, report)


@component
def baselines(modality: str, bootstrap: int, seed: int, cache_dir: str, splits: Input[Dataset],
              evaluation: Output[Artifact], metrics: Output[Metrics]):
    """The majority class and a histogram logistic regression, evaluated like the CNNs."""
    from pipelines import steps
    steps.baselines(modality, bootstrap, seed, cache_dir, splits, evaluation, metrics)


@component
def train(modality: str, backbone: str, strategy: str, training: dict, cache_dir: str,
          splits: Input[Dataset], model: Output[Model]):
    """One backbone x strategy with the ``training`` settings (components.train.TrainSettings)."""
    from pipelines import steps
    steps.train(modality, backbone, strategy, training, cache_dir, splits, model)


@component
def evaluate(min_f1: float, collapse_sd: float, bootstrap: int, seed: int, cache_dir: str, model: Input[Model],
             splits: Input[Dataset],
             evaluation: Output[Artifact], metrics: Output[Metrics], classification: Output[ClassificationMetrics],
             report: Output[HTML], graph: Output[Model]):
    """Test metrics with 95 % cluster-bootstrap CIs; temperature and threshold from validation; plots, blessing;
    and, in the same process, the serving graph of the model just scored (export adds its card)."""
    from pipelines import steps
    steps.evaluate(min_f1, collapse_sd, bootstrap, seed, cache_dir, model, splits, evaluation, metrics, classification,
                   report, graph)


@component
def evaluate_fold(min_f1: float, collapse_sd: float, bootstrap: int, seed: int, cache_dir: str, model: Input[Model],
                  splits: Input[Dataset],
                  evaluation: Output[Artifact], metrics: Output[Metrics],
                  classification: Output[ClassificationMetrics], report: Output[HTML]):
    """A cross-validation fold's evaluation, like evaluate's; nothing of it is served, so no graph."""
    from pipelines import steps
    steps.evaluate(min_f1, collapse_sd, bootstrap, seed, cache_dir, model, splits, evaluation, metrics, classification,
                   report)


@component
def gather_first(cache_dir: str, evaluation: Input[Artifact], collected: Output[Artifact]):
    """A folder of evaluations, started with this one (the ensemble and the pool read it)."""
    from pipelines import steps
    steps.gather(cache_dir, None, evaluation, collected)


@component
def gather(cache_dir: str, previous: Input[Artifact], evaluation: Input[Artifact], collected: Output[Artifact]):
    """The previous folder of evaluations, and this one."""
    from pipelines import steps
    steps.gather(cache_dir, previous, evaluation, collected)


@component
def ensemble(min_f1: float, collapse_sd: float, bootstrap: int, seed: int, cache_dir: str, collected: Input[Artifact],
             evaluation: Output[Artifact], metrics: Output[Metrics]):
    """The cohort's mean calibrated probability, its threshold on validation, evaluated like a model."""
    from pipelines import steps
    steps.ensemble(min_f1, collapse_sd, bootstrap, seed, cache_dir, collected, evaluation, metrics)


@component
def export(cache_dir: str, model: Input[Model], evaluation: Input[Artifact], graph: Input[Model],
           ensemble: Input[Artifact], saved_model: Output[Model]):
    """The evaluate step's SavedModel (serving_default + explain, warmup requests) with its model card
    (which names the cohort ensemble): a copy and a JSON file, no TensorFlow."""
    from pipelines import steps
    steps.export(cache_dir, model, evaluation, graph, ensemble, saved_model)


@component
def folds(k: int, seed: int, cache_dir: str, examples: Input[Dataset], folds: Output[Dataset],
          report: Output[Markdown]):
    """k patient-wise folds, stratified per source and class; each a train/validation/test split folder."""
    from pipelines import steps
    steps.folds(k, seed, cache_dir, examples, folds, report)


@component
def select_fold(index: int, cache_dir: str, folds: Input[Dataset], splits: Output[Dataset]):
    """Fold ``index`` of the folds, as a split folder the training steps take."""
    from pipelines import steps
    steps.select_fold(index, cache_dir, folds, splits)


@component
def pool(bootstrap: int, seed: int, cache_dir: str, collected: Input[Artifact], evaluation: Output[Artifact],
         metrics: Output[Metrics]):
    """The folds' out-of-fold predictions pooled: every patient once, measured like a test split."""
    from pipelines import steps
    steps.pool(bootstrap, seed, cache_dir, collected, evaluation, metrics)


@component
def challenge(model_repo: str, margin: float, bootstrap: int, seed: int, evaluation: Input[Artifact],
              splits: Input[Dataset], blessing: Output[Artifact], report: Output[Markdown]):
    """The stable version scored on the candidate's test records; blessed for canary when non-inferior."""
    from pipelines import steps
    steps.challenge(model_repo, margin, bootstrap, seed, evaluation, splits, blessing, report)


@component
def push(model_repo: str, keep: int, saved_model: Input[Model], evaluation: Input[Artifact],
         blessing: Input[Artifact], record: Output[Markdown]):
    """Models blessed by evidence into the model repository (atomic, loaded and warmed up first);
    a refused one is skipped with the reason."""
    from pipelines import steps
    steps.push(model_repo, keep, saved_model, evaluation, blessing, record)
