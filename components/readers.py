"""Readers for the three real source formats (ARCHITECTURE.md, "Source formats").

A reader works in two phases so a Beam pipeline can spread the work: ``units()`` lists cheap
work units on the driver (files), and ``items(unit)`` runs on a worker and yields one
:class:`RawItem` per image, with the undecoded bytes, the label and the patient. A problem
found while reading (an unknown class folder, a record with missing features) travels on the
item as ``problem`` so the extract step quarantines it instead of crashing.
"""
from __future__ import annotations

import csv
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DDSM_SIDE = 299


@dataclass(frozen=True)
class RawItem:
    source_id: str
    patient_id: str
    label: int | None
    data: bytes
    raw_shape: tuple[int, int] | None = None  # set when data is raw uint8 grayscale pixels
    problem: str | None = None


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if root.is_dir() else path.name


def _visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


# --------------------------------------------------------------------------- class folders
DEFAULT_CLASS_MAP = {"malignant": 1, "benign": 0, "normal": 0}


@dataclass(frozen=True)
class ClassFolderReader:
    """``<root>/<class>/**/<image>``: the label comes from the class folder's name.

    ``label_map`` is matched case-insensitively; a folder not in it takes ``default_label``,
    or is quarantined when that is None. Files matching ``exclude`` (BUSI's lesion masks,
    ``*_mask*``) are not images of the dataset and are skipped, and counted as such.
    """
    root: Path
    label_map: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CLASS_MAP))
    default_label: int | None = 0
    exclude: tuple[str, ...] = ("*_mask*",)
    name = "class_folders"

    def units(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder of class folders (e.g. benign/ malignant/ normal/)")
        return [str(p) for p in _visible_files(self.root) if not self.excluded(p)]

    def excluded(self, path: Path) -> bool:
        return any(fnmatch.fnmatch(path.name, pattern) for pattern in self.exclude)

    def skipped(self) -> list[str]:
        return [_relative(p, self.root) for p in _visible_files(self.root) if self.excluded(p)]

    def items(self, unit: str) -> Iterator[RawItem]:
        path = Path(unit)
        rel = path.relative_to(self.root)
        image_id = rel.as_posix()
        problem, label = None, None
        if len(rel.parts) < 2:
            problem = "file is not inside a class folder"
        else:
            folder = rel.parts[0].lower()
            label = {k.lower(): v for k, v in self.label_map.items()}.get(folder, self.default_label)
            if label is None:
                problem = f"class folder {rel.parts[0]!r} is not in the label map {sorted(self.label_map)}"
        yield RawItem(image_id, image_id, label, path.read_bytes(), problem=problem)


# --------------------------------------------------------------------------- IDC patch tree
IDC_NAME = re.compile(r"^(?P<patient>[^_]+)_idx\d+_x(?P<x>-?\d+)_y(?P<y>-?\d+)_class(?P<cls>[01])\.png$", re.I)


@dataclass(frozen=True)
class IdcTreeReader:
    """Kaggle "Breast Histopathology Images": ``<patient>/<0|1>/<patient>_idx5_xX_yY_classN.png``."""
    root: Path
    name = "idc_tree"

    def units(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not an IDC patient tree (<patient>/<0|1>/*.png)")
        return [str(p) for p in _visible_files(self.root)]

    def skipped(self) -> list[str]:
        return []

    def items(self, unit: str) -> Iterator[RawItem]:
        path = Path(unit)
        rel = path.relative_to(self.root)
        parts = rel.parts
        patient = parts[0] if len(parts) >= 2 else ""
        label, problem = None, None
        if len(parts) != 3 or parts[1] not in ("0", "1"):
            problem = "not at <patient>/<0|1>/<patch>.png"
        else:
            label = int(parts[1])
            m = IDC_NAME.match(parts[2])
            if m and int(m["cls"]) != label:
                problem = f"class folder {label} disagrees with the file name's class{m['cls']}"
            elif m and m["patient"] != patient:
                problem = f"file name's patient {m['patient']} differs from its folder {patient}"
        yield RawItem(rel.as_posix(), patient, label, path.read_bytes(), problem=problem)


# --------------------------------------------------------------------------- DDSM TFRecords
@dataclass(frozen=True)
class DdsmReader:
    """Kaggle "DDSM Mammography" TFRecords: ``label`` (0-4), ``label_normal`` (binary target),
    ``image`` (raw 299x299 uint8 grayscale).

    The Kaggle files carry no patient, so each record is its own patient, unless an index CSV
    sits beside the file (``<stem>_index.csv``, one row per record in order) with a
    ``patient_id`` or ``woman`` column: then records of one woman share a patient id, so the
    split keeps them together.
    """
    root: Path
    name = "ddsm"

    def units(self) -> list[str]:
        if self.root.is_file():
            return [str(self.root)]
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is neither a DDSM TFRecord file nor a folder of them")
        files = sorted(p for p in self.root.iterdir() if p.is_file() and re.search(r"\.tfrecords?(\.gz)?$", p.name))
        if not files:
            raise FileNotFoundError(f"no *.tfrecords files in {self.root}")
        return [str(p) for p in files]

    def skipped(self) -> list[str]:
        return []

    @staticmethod
    def patient_index(path: Path) -> tuple[list[str] | None, str | None]:
        stem = re.sub(r"\.tfrecords?(\.gz)?$", "", path.name)
        index = path.with_name(f"{stem}_index.csv")
        if not index.is_file():
            return None, None
        with index.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for column in ("patient_id", "woman"):
            if rows and column in rows[0]:
                return [r[column] for r in rows], f"{index.name}:{column}"
        return None, None

    def items(self, unit: str) -> Iterator[RawItem]:
        import tensorflow as tf
        from tensorflow.core.example import example_pb2

        path = Path(unit)
        patients, _ = self.patient_index(path)
        compression = "GZIP" if path.name.endswith(".gz") else ""
        records = iter(tf.data.TFRecordDataset(str(path), compression_type=compression))
        i = 0
        while True:
            source_id = f"{path.name}#{i}"
            patient = patients[i] if patients and i < len(patients) else source_id
            try:
                raw = next(records)
            except StopIteration:
                return
            except tf.errors.OpError as e:  # truncated or corrupt file: keep what came before, quarantine the rest
                yield RawItem(source_id, patient, None, b"",
                              problem=f"{path.name} is corrupt from record {i} on ({type(e).__name__}); "
                                      "the records before it were read")
                return
            i += 1
            try:
                feature = example_pb2.Example.FromString(raw.numpy()).features.feature
            except Exception as e:  # a record that is no tf.Example at all
                yield RawItem(source_id, patient, None, b"", problem=f"not a tf.Example: {e}")
                continue
            missing = [k for k in ("label_normal", "image") if k not in feature]
            empty = [k for k, kind in (("label_normal", "int64_list"), ("image", "bytes_list"))
                     if k in feature and not getattr(feature[k], kind).value]
            if missing or empty:
                yield RawItem(source_id, patient, None, b"", problem="record lacks feature(s) "
                              + ", ".join(missing + [f"{k} (empty)" for k in empty]))
                continue
            label = int(feature["label_normal"].int64_list.value[0])
            data = feature["image"].bytes_list.value[0]
            problem = None
            if label not in (0, 1):
                problem = f"label_normal is {label}, expected 0 or 1"
            elif "label" in feature and feature["label"].int64_list.value and \
                    int(feature["label"].int64_list.value[0] > 0) != label:
                problem = f"label {feature['label'].int64_list.value[0]} contradicts label_normal {label}"
            yield RawItem(source_id, patient, label, data, raw_shape=(DDSM_SIDE, DDSM_SIDE), problem=problem)


FORMATS = {"ddsm": DdsmReader, "class_folders": ClassFolderReader, "idc_tree": IdcTreeReader}


def make_reader(source_format: str, root: str | Path, **options):
    try:
        cls = FORMATS[source_format]
    except KeyError:
        raise ValueError(f"unknown source format {source_format!r}; choose one of {', '.join(FORMATS)}") from None
    return cls(Path(root).absolute(), **options)
