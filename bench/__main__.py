"""``python -m bench``: every benchmark in turn (input pipeline, then gateway)."""
import sys

from bench import gateway, input_pipeline

if __name__ == "__main__":
    code = input_pipeline.main(sys.argv[1:])
    raise SystemExit(code or gateway.main([]))
