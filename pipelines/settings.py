"""One pipeline run's settings, declared once: the training hyper-parameters
(``components.train.TrainSettings``) plus what the rest of a run needs. The command line's
options (``components.core.cli.add_options``), the pipeline function's parameter defaults
(``pipelines.definition``) and the study's profiles (``pipelines.study.run``) are all made from it."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from components.core import catalog
from components.evaluation import stats
from components.train import TrainSettings


@dataclass(kw_only=True)
class RunSettings(TrainSettings):
    """One pipeline run's settings: the training hyper-parameters (TrainSettings, the one
    declaration) plus what the rest of the run needs. The CLI options are made from these
    fields and the pipeline function's defaults are ``RunSettings()``'s."""
    split_seed: int = field(default=0, metadata={"help": "seed of the patient-wise split and stain reference"})
    min_f1: float = field(default=0.70, metadata={"help": "blessing rule: test F1 at least this"})
    collapse_sd: float = field(default=0.01, metadata={
        "help": "blessing rule: a model whose calibrated validation probabilities vary less than this (SD), or "
                "whose temperature sits at its fitting bound, has collapsed and is not blessed; 0 turns this off"})
    bootstrap: int = field(default=stats.BOOTSTRAP_RESAMPLES, metadata={"help": "cluster-bootstrap resamples for the 95%% CIs"})
    noninferiority_margin: float = field(default=0.02, metadata={
        "help": "canary blessing: the candidate's AUC minus the stable version's on the same test records must "
                "have its lower 95%% bound above minus this"})
    max_quarantine: float = field(default=0.01, metadata={"help": "extract fails above this share of unreadable inputs"})
    keep_versions: int = field(default=3, metadata={"help": "model versions kept in the repository per model"})
    backbones: list[str] = field(default_factory=lambda: list(catalog.BACKBONES),
                                 metadata={"help": "comma-separated", "choices": catalog.BACKBONES})
    strategies: list[str] = field(default_factory=lambda: list(catalog.STRATEGIES),
                                  metadata={"help": "comma-separated", "choices": catalog.STRATEGIES})

    def training(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(TrainSettings)}

    def arguments(self) -> dict:
        """The pipeline parameters these settings fill (the fan-out is fixed at compile time)."""
        return {"training": self.training(), **{f.name: getattr(self, f.name) for f in fields(self)
                                                 if f.name not in self.training() and f.name not in ("backbones", "strategies")}}
