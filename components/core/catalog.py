"""The product's vocabulary: modalities, backbones, training strategies and model names.

Everything that enumerates "the 18 models" or "the 6 cohorts" reads it from here.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

BACKBONES = ("resnet50", "vgg16", "densenet121")
STRATEGIES = ("unfrozen", "progressive")


@dataclass(frozen=True)
class Modality:
    name: str
    label_names: tuple[str, str]  # index = binary label (0, 1)
    source_format: str            # default reader in components.data.readers
    description: str
    # Split groups images whose 32x32 thumbnails correlate at least this much (0: off):
    # BUSI files frames of one lesion as separate images, sometimes under two classes.
    near_duplicate_r: float = 0.0
    augmentation: str = "report"  # default training augmentation policy (components.model.inputs)
    despeckle: bool = False       # 3x3 median filter + histogram equalization (components.model.preprocess)
    stain_normalization: bool = False   # Macenko step between split and training (components.stain)
    # the study's sources under its data root (components.data.sources: name, path, format options)
    study_sources: tuple[dict, ...] = ()


# BUS-BRA as published: Images/<ID>.png and bus_data.csv (biopsy-proven Pathology, patient = Case)
BUSBRA = {"name": "busbra", "path": "busbra", "format": "manifest", "manifest": "bus_data.csv",
          "image_column": "ID", "path_template": "Images/{}.png", "label_column": "Pathology",
          "label_map": {"malignant": 1, "benign": 0}, "patient_column": "Case"}


MODALITIES = {
    m.name: m
    for m in (
        Modality("mammography", ("No tumor", "Tumor"), "ddsm",
                 "DDSM ROI patches (grayscale); label_normal is the binary target", augmentation="dihedral",
                 study_sources=({"name": "mias", "path": "ddsm"},)),
        Modality("ultrasound", ("Benign or normal", "Malignant"), "class_folders",
                 "B-mode frames in benign/ malignant/ normal/ class folders", near_duplicate_r=0.97,
                 augmentation="ultrasound", despeckle=True,
                 study_sources=({"name": "busi", "path": "busi"}, BUSBRA)),
        Modality("histopathology", ("IDC negative", "IDC positive"), "idc_tree",
                 "H&E patches in the IDC <patient>/<0|1>/ tree", augmentation="histology",
                 stain_normalization=True, study_sources=({"name": "idc", "path": "idc"},)),
    )
}


def modality(name: str) -> Modality:
    """The modality called ``name``, or a ValueError that lists the known ones."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; choose one of {', '.join(MODALITIES)}") from None


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")
    return value


def model_name(modality_name: str, backbone: str, strategy: str) -> str:
    modality(modality_name)
    check_choice("backbone", backbone, BACKBONES)
    check_choice("strategy", strategy, STRATEGIES)
    return f"{modality_name}-{backbone}-{strategy}"


def parse_model_name(name: str) -> tuple[str, str, str]:
    """Inverse of :func:`model_name`; raises ValueError for a name outside the catalog."""
    parts = name.split("-")
    if len(parts) != 3:
        raise ValueError(f"model name {name!r} is not <modality>-<backbone>-<strategy>")
    model_name(*parts)
    return parts[0], parts[1], parts[2]


def all_model_names() -> list[str]:
    return [model_name(m, b, s) for m, b, s in itertools.product(MODALITIES, BACKBONES, STRATEGIES)]


def cohort_models(modality_name: str, strategy: str) -> list[str]:
    """The three backbones of one cohort, in the catalog's order."""
    return [model_name(modality_name, b, strategy) for b in BACKBONES]
