"""Readers for the real source formats (ARCHITECTURE.md, "Source formats"): the DDSM
TFRecords, class folders, the IDC patient tree, a manifest (image files listed in a CSV);
DICOM Part 10 files with a labels manifest are read by ``components.data.dicom_folder``.

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

from components.imaging import images

DDSM_SIDE = 299


@dataclass(frozen=True)
class RawItem:
    source_id: str
    patient_id: str
    label: int | None
    data: bytes
    raw_shape: tuple[int, int] | None = None  # set when data is raw uint8 grayscale pixels
    problem: str | None = None
    # set when the reader had to decode the image itself (DICOM: the header names the patient)
    decoded: images.DecodedImage | None = None


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

    def patient_source(self) -> str:
        return "image id (source has no patients)"

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

    def patient_source(self) -> str:
        return "folder names"

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


# --------------------------------------------------------------------------- a manifest CSV
def read_manifest(path: Path, columns: list[str]) -> list[dict]:
    """The rows of a manifest CSV that has every one of ``columns`` (empty names are not asked)."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c and c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"manifest {path.name} has no column {', '.join(map(repr, missing))}; "
                             f"its columns are {', '.join(reader.fieldnames or [])}")
        return list(reader)


@dataclass(frozen=True)
class ManifestReader:
    """Image files listed in a CSV, one row an image, as hospitals export them and as BUS-BRA
    is published (``Images/<ID>.png`` + ``bus_data.csv``): ``image_column`` holds a path relative
    to ``root`` or an ID that ``path_template`` turns into one (``Images/{}.png``),
    ``label_column`` a value that ``label_map`` maps to 0/1 (case-insensitive), and
    ``patient_column`` the patient (else each image is its own patient).

    A bad row becomes a quarantined item with its reason, never a crash: a missing file, a path
    leaving ``root``, an unknown label, an empty patient, a file listed twice (the first row is
    kept when the rows agree on the label; every row is refused when they do not)."""
    root: Path
    manifest: str
    image_column: str
    label_column: str
    label_map: dict[str, int]
    patient_column: str = ""
    path_template: str = "{}"
    name = "manifest"

    def csv_path(self) -> Path:
        path = Path(self.manifest)
        return path if path.is_absolute() else self.root / path

    def rows(self) -> list[dict]:
        return read_manifest(self.csv_path(), [self.image_column, self.label_column, self.patient_column])

    def units(self) -> list[tuple]:
        """(row number, path relative to root, label, patient, problem) per row; the problems a
        row shows on its own or beside the others are found here, before any image is read."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder (the manifest's paths are relative to it)")
        labels = {k.strip().lower(): v for k, v in self.label_map.items()}
        root = self.root.resolve()
        units, by_file = [], {}
        for number, row in enumerate(self.rows(), start=2):           # line 1 is the header
            ref = (row.get(self.image_column) or "").strip()
            rel = self.path_template.format(ref) if ref else ""
            value = (row.get(self.label_column) or "").strip()
            label = labels.get(value.lower())
            patient = (row.get(self.patient_column) or "").strip() if self.patient_column else rel
            problem = None
            resolved = (root / rel).resolve() if rel else None
            if not ref:
                problem = f"row {number}: empty {self.image_column!r}"
            elif resolved is None or not resolved.is_relative_to(root):
                problem = f"row {number}: {rel!r} leaves the source folder"
            elif not resolved.is_file():
                problem = f"row {number}: {rel} does not exist"
            elif label is None:
                problem = f"row {number}: label {value!r} is not in the label map {sorted(self.label_map)}"
            elif not patient:
                problem = f"row {number}: empty patient column {self.patient_column!r}"
            if resolved is not None and problem is None:
                by_file.setdefault(resolved, []).append(len(units))
            units.append([number, rel, label, patient, problem])
        for indices in by_file.values():
            if len(indices) > 1:
                rows = " and ".join(str(units[i][0]) for i in indices)
                agree = len({units[i][2] for i in indices}) == 1
                for k, i in enumerate(indices):
                    if not agree:
                        units[i][4] = f"rows {rows} list the same file with different labels"
                    elif k:
                        units[i][4] = f"rows {rows} list the same file; row {units[indices[0]][0]} is kept"
        return [tuple(u) for u in units]

    def skipped(self) -> list[str]:
        return []

    def patient_source(self) -> str:
        return f"{Path(self.manifest).name}:{self.patient_column}" if self.patient_column else "image id (no patient column)"

    def items(self, unit: tuple) -> Iterator[RawItem]:
        number, rel, label, patient, problem = unit
        if problem:   # a refused row's id names its row: two rows may list one file
            yield RawItem(f"{rel} (row {number})" if rel else f"row {number}", patient or f"row {number}", label, b"",
                          problem=problem)
            return
        yield RawItem(rel, patient, label, (self.root / rel).read_bytes())


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

    def patient_source(self) -> str:
        return self.patient_index(Path(self.units()[0]))[1] or "image id (source has no patients)"

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


READERS = {"ddsm": DdsmReader, "class_folders": ClassFolderReader, "idc_tree": IdcTreeReader,
           "manifest": ManifestReader}
FORMATS = (*READERS, "dicom")      # dicom: components.data.dicom_folder, which builds on RawItem here


def make_reader(source_format: str, root: str | Path, **options):
    try:
        cls = READERS[source_format]
    except KeyError:
        raise ValueError(f"unknown source format {source_format!r}; choose one of {', '.join(READERS)}") from None
    return cls(Path(root).absolute(), **options)
