"""Breast-cancer imaging MLOps: per-modality pipelines, serving and a gateway."""
from setuptools import find_packages, setup

setup(
    name="bcimaging",
    version="0.1.0",
    description="Per-modality Kubeflow pipelines, TF Serving model repository and a Flask gateway "
                "for breast-cancer imaging (mammography, ultrasound, histopathology).",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["components", "components.*", "pipelines", "pipelines.*",
                                    "serving", "serving.*", "gateway", "gateway.*"]),
    include_package_data=True,
    # Versions are pinned in requirements.txt (the lock); these are the direct needs.
    install_requires=[
        "tensorflow", "keras", "tensorflow-data-validation", "tfx-bsl", "tensorflow-serving-api",
        "apache-beam[gcp]", "pyarrow", "kfp", "kfp-kubernetes", "protobuf", "numpy", "pandas",
        "grpcio", "flask", "waitress", "scikit-learn", "opencv-python-headless", "pillow",
        "matplotlib", "tqdm",
    ],
)
