"""A reader of DICOM Part 10 files (mammography MG, ultrasound US) with a labels manifest, for
the extract step (``components.data.readers``' two-phase contract: ``units()`` on the driver,
``items(unit)`` on a worker). Pixels come from ``components.imaging.dicom``, the gateway's reader;
patients, files and UIDs leave it only as keyed pseudonyms (``components.core.phi``)."""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from components.imaging import images
from components.core import phi
from components.imaging.quiet import quiet_pydicom
from components.data.readers import RawItem, _visible_files, read_manifest

UID_VALUE = re.compile(r"[0-9]+(\.[0-9]+)+")


def uid_in(cell: str) -> str:
    """The UID a manifest cell names: the cell itself, or its last path part that is a UID
    (CBIS-DDSM lists ``<case>/<study UID>/<series UID>/000000.dcm``); '' when there is none."""
    parts = [cell] + cell.replace("\\", "/").split("/")[::-1]
    return next((p for p in parts if UID_VALUE.fullmatch(p)), "")


def header_uid(path: Path, attribute: str) -> str:
    """``attribute`` (a UID) of the DICOM file at ``path``, from its header alone; '' for a file
    that is no DICOM (by content) or whose header cannot be read. SOPInstanceUID comes from the
    file meta; another attribute from the data set read up to the pixels, except in a Deflated
    file, whose body pydicom inflates whole first (components.imaging.dicom refuses those anyway)."""
    import pydicom
    from pydicom import uid

    from components.imaging import dicom

    with path.open("rb") as f:
        if not dicom.is_dicom(f.read(132)):
            return ""
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
            if attribute == "SOPInstanceUID":
                return str(meta.get("MediaStorageSOPInstanceUID") or "")
            if meta.get("TransferSyntaxUID") == uid.DeflatedExplicitVRLittleEndian:
                return ""
            f.seek(0)
            ds = pydicom.dcmread(f, defer_size=1024, stop_before_pixels=True, specific_tags=[attribute])
            return str(ds.get(attribute) or "")
        except Exception:            # an unreadable header: the rows naming it find no file
            return ""


@dataclass
class ManifestRow:
    """One row of a DICOM labels manifest, on the driver. ``rel``, ``cell`` and ``patient`` are
    in clear and never leave the reader: units carry their pseudonyms."""
    where: str                  # "row 5", or "calc.csv row 5": where a person finds the row
    cell: str = ""              # what the row names its file by: a path or a UID
    rel: str = ""               # the file, relative to the root, once found
    ref: str = ""               # the file's identity for its pseudonym: the path, or the UID
    label: int | None = None
    patient: str = ""
    abnormality: str = ""
    problem: str | None = None


def _rows_named(rows: list[ManifestRow]) -> str:
    return " and ".join(r.where for r in rows)


@dataclass(frozen=True)
class DicomReader:
    """DICOM Part 10 files (mammography MG, ultrasound US) under ``root``, labeled by one or
    more manifest CSVs read as one table. A row names its file by ``image_column`` (a path
    relative to ``root``, through ``path_template``) or by ``uid_column`` (a UID of
    ``uid_attribute``: SOPInstanceUID, or SeriesInstanceUID for a one-image series), looked up
    among the folder's DICOM files, which are recognized by content whatever their names;
    ``label_column`` holds a value that ``label_map`` maps to 0/1 (case-insensitive); the
    patient is ``patient_column``, else the file's PatientID. Pixels are read by
    ``components.imaging.dicom``, the gateway's reader.

    Rows of one file are its abnormalities when ``abnormality_column`` tells them apart (CBIS-DDSM
    lists one row per abnormality): one record, positive when any of them is. Otherwise, and for
    an abnormality listed twice, the file is listed twice and quarantined as ManifestReader does:
    the repeats when the rows agree on the label, every row of the file when they do not.

    Nothing that identifies a patient leaves the reader in clear: patient and source ids are
    keyed hashes (``components.core.phi``), a refused row is named by its row number, and a reason
    says "the listed file", never its path."""
    root: Path
    modality: str
    manifest: tuple[str, ...]
    label_column: str
    label_map: dict[str, int]
    key: bytes = field(repr=False)
    image_column: str = ""
    uid_column: str = ""
    uid_attribute: str = "SOPInstanceUID"
    patient_column: str = ""
    abnormality_column: str = ""
    path_template: str = "{}"
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    name = "dicom"

    def __post_init__(self):
        phi.require(self.key, "a DICOM source")
        if bool(self.image_column) == bool(self.uid_column):
            raise ValueError("a DICOM source names its files by image_column (a path) or by uid_column (a UID): "
                             "give one of them")
        if not self.manifest:
            raise ValueError("a DICOM source needs a labels manifest (CSV)")

    def csv_paths(self) -> list[Path]:
        return [p if p.is_absolute() else self.root / p for p in map(Path, self.manifest)]

    def pseudonym(self, kind: str, value: str) -> str:
        return phi.pseudonym(self.key, kind, value)

    # -- on the driver: rows -> units
    def units(self) -> list[tuple]:
        """(where, file, image id, label, patient id, problem) per image or refused row; every
        problem a row shows on its own or beside the others is found here."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder (the manifest's files are in it)")
        locate = self._by_uid(self.uid_index()) if self.uid_column else self._by_path
        rows = self.rows()
        for row in rows:
            problem = f"empty {self.image_column or self.uid_column!r}"
            if row.cell:
                row.rel, row.ref, problem = locate(row.cell)
                problem = problem or self._cell_problem(row)
            row.problem = f"{row.where}: {problem}" if problem else None
        return [self._unit(group) for group in self._images(rows)]

    def rows(self) -> list[ManifestRow]:
        labels = {k.strip().lower(): v for k, v in self.label_map.items()}
        columns = [self.image_column or self.uid_column, self.label_column, self.patient_column,
                   self.abnormality_column]
        paths, out = self.csv_paths(), []
        for path in paths:
            prefix = f"{path.name} " if len(paths) > 1 else ""
            for number, cells in enumerate(read_manifest(path, columns), start=2):     # line 1 is the header
                out.append(self._row(f"{prefix}row {number}", cells, labels))
        return out

    def _row(self, where: str, cells: dict, labels: dict[str, int]) -> ManifestRow:
        def cell(column):
            return (cells.get(column) or "").strip() if column else ""

        value = cell(self.label_column)
        return ManifestRow(where, cell(self.image_column or self.uid_column), label=labels.get(value.lower()),
                           patient=cell(self.patient_column), abnormality=cell(self.abnormality_column))

    def _cell_problem(self, row: ManifestRow) -> str | None:
        if row.label is None:       # the label map's own values are no PHI; the row's might be
            return f"the label is not in the label map {sorted(self.label_map)}"
        if self.patient_column and not row.patient:
            return f"empty patient column {self.patient_column!r}"
        return None

    def _by_path(self, cell: str) -> tuple[str, str, str | None]:
        root = self.root.resolve()
        resolved = (root / self.path_template.format(cell)).resolve()
        if not resolved.is_relative_to(root):
            return "", "", "the listed path leaves the source folder"
        rel = resolved.relative_to(root).as_posix()
        if not resolved.is_file():
            return "", rel, "the listed file does not exist"
        return rel, rel, None

    def _by_uid(self, index: dict[str, list[str]]):
        def locate(cell: str) -> tuple[str, str, str | None]:
            uid = uid_in(cell)
            files = index.get(uid, [])
            if not uid:
                return "", "", f"no UID in column {self.uid_column!r}"
            if not files:
                return "", uid, f"no DICOM file in the source folder has the listed {self.uid_attribute}"
            if len(files) > 1:
                return "", uid, f"{len(files)} DICOM files in the source folder have the listed {self.uid_attribute}"
            return files[0], uid, None
        return locate

    def uid_index(self) -> dict[str, list[str]]:
        """UID -> the files that hold it, over every DICOM file under the root."""
        index = collections.defaultdict(list)
        with quiet_pydicom():
            for path in _visible_files(self.root):
                value = header_uid(path, self.uid_attribute)
                if value:
                    index[value].append(path.relative_to(self.root).as_posix())
        return index

    def _images(self, rows: list[ManifestRow]) -> list[list[ManifestRow]]:
        """Refused rows one by one, and the kept rows of each file together, in row order."""
        by_file = collections.defaultdict(list)
        for row in rows:
            if row.problem is None:
                by_file[row.rel].append(row)
        for same_file in by_file.values():
            self._refuse_repeats(same_file)
        first = {id(r): i for i, r in enumerate(rows)}
        groups = [[r] for r in rows if r.problem] + [kept for same in by_file.values()
                                                     if (kept := [r for r in same if r.problem is None])]
        return sorted(groups, key=lambda g: first[id(g[0])])

    def _refuse_repeats(self, rows: list[ManifestRow]) -> None:
        """Among the rows of one file: a repeated abnormality (or, without an abnormality
        column, any second row) is refused; when repeats disagree on the label, or the rows on
        the patient, the image cannot be labeled and every row is refused."""
        what = "the same abnormality of one file" if self.abnormality_column else "the same file"
        repeats = collections.defaultdict(list)
        for row in rows:
            repeats[row.abnormality if self.abnormality_column else ""].append(row)
        for same in (g for g in repeats.values() if len(g) > 1):
            if len({r.label for r in same}) > 1:
                for row in rows:
                    row.problem = f"{_rows_named(same)} list {what} with different labels"
                return
            for row in same[1:]:
                row.problem = f"{_rows_named(same)} list {what}; {same[0].where} is kept"
        kept = [r for r in rows if r.problem is None]
        if len({r.patient for r in kept}) > 1:
            for row in kept:
                row.problem = f"{_rows_named(kept)} list one file under different patients"

    def _unit(self, rows: list[ManifestRow]) -> tuple:
        head = rows[0]
        image_id = self.pseudonym("image", head.ref) if head.ref else ""
        patient_id = self.pseudonym("patient", head.patient) if head.patient else ""
        label = max((r.label for r in rows if r.label is not None), default=None)   # any positive: positive
        return (_rows_named(rows), head.rel, image_id, label, patient_id, head.problem)

    def skipped(self) -> list[str]:
        return []      # the folder's other files are not the dataset's images; their names may be PHI

    def patient_source(self) -> str:
        if self.patient_column:
            return f"{', '.join(p.name for p in self.csv_paths())}:{self.patient_column} (keyed hash)"
        return "DICOM PatientID (keyed hash)"

    # -- on a worker: one unit -> one item
    def items(self, unit: tuple) -> Iterator[RawItem]:
        from components.imaging import dicom

        where, rel, image_id, label, patient_id, problem = unit
        refused = f"{image_id} ({where})" if image_id else where     # the row tells a person where to look
        if problem:
            yield RawItem(refused, patient_id or where, label, b"", problem=problem)
            return
        try:
            data = (self.root / rel).read_bytes()
        except OSError as e:       # not str(e): it names the path
            yield RawItem(refused, patient_id or where, label, b"",
                          problem=f"{where}: the listed file cannot be read ({type(e).__name__})")
            return
        try:
            with quiet_pydicom():
                image = dicom.read(data, self.modality, self.max_pixels)
                patient_id = patient_id or self._patient_of(image.dataset)
        except Exception as e:     # dicom.read says why; anything else is the header's PatientID
            reason = phi.redact(str(e), (rel, *Path(rel).parts)) if isinstance(e, dicom.DicomRejected) \
                else f"unreadable PatientID ({type(e).__name__})"
            yield RawItem(refused, patient_id or where, label, data, problem=f"{where}: {reason}")
            return
        if not patient_id:
            yield RawItem(refused, where, label, data,
                          problem=f"{where}: the DICOM file has no PatientID and the manifest no patient column")
            return
        yield RawItem(image_id, patient_id, label, data, decoded=image.image)

    def _patient_of(self, dataset) -> str:
        value = str(dataset.get("PatientID") or "").strip()
        return self.pseudonym("patient", value) if value else ""
