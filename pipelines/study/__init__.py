"""The real-data study: every model of every modality on the shared datasets, seed replicates and
cross-validation, and the report and tables it is read through."""
