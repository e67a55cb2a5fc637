"""``python -m gateway.dicom_node``: the DICOM node's former command, kept for one release. The node
is its own package now: run ``python -m dicom_node``."""
import sys

from dicom_node.__main__ import main

if __name__ == "__main__":
    print("python -m gateway.dicom_node is deprecated: run python -m dicom_node", file=sys.stderr)
    raise SystemExit(main())
