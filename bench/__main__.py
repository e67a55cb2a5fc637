"""``python -m bench``: every benchmark in turn (input pipeline, gateway, the gateway's profile,
evaluation, the DICOM upload path, a model's steps after training on a study's models)."""
import sys

from bench import dicom, evaluation, gateway, gateway_profile, input_pipeline, steps

if __name__ == "__main__":
    for bench in (input_pipeline, gateway, gateway_profile, evaluation, dicom, steps):
        code = bench.main([])
        if code:
            raise SystemExit(code)
