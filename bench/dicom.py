"""``python -m bench.dicom``: what the gateway's DICOM path costs for a full-field mammogram,
side by side with the PNG path of the same image, in one run.

A 3328 x 4084 mammogram of 16-bit stored values (12 bits used, as a detector writes them) goes
through ``gateway.uploads.prepare`` (the whole upload check and conversion: decode, the
standard's pixel path, the 8-bit transport PNG for a 224-px model) three ways: as a 16-bit PNG
of the same stored values, as uncompressed DICOM and as JPEG 2000 lossless DICOM. Time is the
best of ``--repeats``; memory is the peak resident size a fresh process gains doing it once
(targets on 2 cores: uncompressed +250 ms at most, JPEG 2000 lossless 2 s at most, +300 MB).

    python -m bench.dicom [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS = 4084, 3328
MODEL_SIZE = 224

# run in a fresh process: read the file, then note the peak RSS (VmHWM: ru_maxrss would carry
# the forking parent's size across exec) before and after one prepare()
_ONCE = """
import json, sys
from gateway import uploads
def peak():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
data = open(sys.argv[1], "rb").read()
before = peak()
uploads.prepare(data, 1 << 30, 64_000_000, {size}, sys.argv[2] or None)
print(json.dumps({{"peak_mb": peak() - before}}))
"""


def inputs() -> dict[str, bytes]:
    from PIL import Image
    from pydicom import uid

    from tests import dicom_fixtures as fx

    pixels = fx.breast(ROWS, COLS, bits_stored=12)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return {"PNG, 16-bit": buf.getvalue(),
            "DICOM, uncompressed": fx.mammogram(pixels),
            "DICOM, JPEG 2000 lossless": fx.mammogram(pixels, transfer_syntax=uid.JPEG2000Lossless)}


def seconds(data: bytes, modality: str | None, repeats: int) -> float:
    from gateway import uploads

    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        uploads.prepare(data, 1 << 30, 64_000_000, MODEL_SIZE, modality)
        best = min(best, time.perf_counter() - started)
    return best


def peak_mb(path: Path, modality: str | None) -> float:
    out = subprocess.run([sys.executable, "-c", _ONCE.format(size=MODEL_SIZE), str(path), modality or ""],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])["peak_mb"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dicom", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    files = inputs()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            modality = "mammography" if name.startswith("DICOM") else None
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            rows[name] = (len(data), seconds(data, modality, args.repeats), peak_mb(path, modality))
    base_s, base_mb = rows["PNG, 16-bit"][1:]
    print(f"gateway upload path, {COLS} x {ROWS} mammogram (12 of 16 bits), to a {MODEL_SIZE}-px model; "
          f"best of {args.repeats}")
    print(f"  {'upload':<28}{'bytes':>13}{'seconds':>10}{'vs PNG':>10}{'peak MB':>10}{'vs PNG':>10}")
    for name, (size, s, mb) in rows.items():
        print(f"  {name:<28}{size:>13,}{s:>10.3f}{s - base_s:>+10.3f}{mb:>10.0f}{mb - base_mb:>+10.0f}")
    print("  targets: uncompressed +0.250 s, JPEG 2000 lossless 2 s at most; +300 MB at most")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
