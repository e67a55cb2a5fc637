"""The Flask gateway: HTML pages, the JSON API, the Open Inference Protocol v2 and DICOM SR answers,
over gRPC to the model server."""
