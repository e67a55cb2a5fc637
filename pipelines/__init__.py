"""Kubeflow Pipelines v2 definitions (one pipeline per modality) and their command line.

The KFP components and pipelines land with the pipelines issue; until then ``demo`` runs the
data layer's steps in sequence on the built-in sample data.
"""
