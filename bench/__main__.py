import sys

from bench import input_pipeline

if __name__ == "__main__":
    raise SystemExit(input_pipeline.main(sys.argv[1:]))
