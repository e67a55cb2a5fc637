"""A data source: one dataset of one modality (a site, a public collection), named, in one of
the reader formats (``components.data.readers``), with the options its format takes.

A modality's pipeline reads one or more sources; every record keeps its source's name, and its
``source_id`` and ``patient_id`` are prefixed with it, so two sources may reuse image or patient
names and the split still groups patients within a source. Sources travel as JSON-able dicts (a
KFP pipeline parameter, ``--sources FILE.json``):

    [{"name": "busi", "path": "busi"},
     {"name": "busbra", "path": "busbra", "format": "manifest", "manifest": "bus_data.csv",
      "image_column": "ID", "path_template": "Images/{}.png", "label_column": "Pathology",
      "label_map": {"malignant": 1, "benign": 0}, "patient_column": "Case"}]

Relative paths are relative to a base folder (the study's data root, or the JSON file's folder).

A DICOM source (``"format": "dicom"``) is a folder of Part 10 files with a labels manifest (one
CSV, or a list read as one table); its rows name files by ``image_column`` (a path) or by
``uid_column`` (a UID of ``uid_attribute``). A ``"preset"`` fills the options of a dataset as
published (``PRESETS``: ``cbis-ddsm``); options given beside it win. The PHI key such a source
needs is never one of its options: the run is given it (``components.core.phi``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from components.core import catalog, phi
from components.data import dicom_folder, readers
from components.imaging import images

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# CBIS-DDSM as published on TCIA: the four case-description CSVs (one row per abnormality),
# full mammograms found by the series UID in "image file path" (the CSV's UID folders are not
# the layout the NBIA retriever writes today), patient = patient_id (the DICOM PatientID is the
# case, e.g. Mass-Training_P_00001_LEFT_CC: one per image), an image positive when any of its
# abnormalities is malignant.
CBIS_DDSM = {"format": "dicom",
             "manifest": ["mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
                          "calc_case_description_train_set.csv", "calc_case_description_test_set.csv"],
             "uid_column": "image file path", "uid_attribute": "SeriesInstanceUID",
             "label_column": "pathology", "label_map": {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0},
             "patient_column": "patient_id", "abnormality_column": "abnormality id"}
PRESETS = {"cbis-ddsm": CBIS_DDSM}
UID_ATTRIBUTES = ("SOPInstanceUID", "SeriesInstanceUID")
DICOM_OPTIONS = ("uid_column", "uid_attribute", "abnormality_column")


def preset(name: str) -> dict:
    try:
        return copy.deepcopy(PRESETS[name])       # a caller may change its copy, never the preset
    except KeyError:
        raise ValueError(f"unknown manifest preset {name!r}; known: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    format: str = ""                          # empty: the modality's default format
    label_map: dict[str, int] | None = None   # class folders: folder -> label; manifest: value -> label
    default_label: int | None = 0             # class folders: label of a folder not in the map (None: quarantine)
    manifest: str | tuple[str, ...] = ""      # manifest, dicom: the CSV (dicom: or several), relative to ``path``
    image_column: str = ""
    path_template: str = "{}"
    label_column: str = ""
    patient_column: str = ""
    exclude: tuple[str, ...] = field(default=("*_mask*",))   # class folders: files that are no images of the set
    uid_column: str = ""                      # dicom: the column naming a file by a UID (instead of image_column)
    uid_attribute: str = "SOPInstanceUID"     # dicom: which UID uid_column holds
    abnormality_column: str = ""              # dicom: rows of one file with different values are its abnormalities

    def __post_init__(self):
        if not NAME.match(self.name or ""):
            raise ValueError(f"source name {self.name!r} must be letters, digits, '_', '.' or '-' (at most 64)")
        if self.format and self.format not in readers.FORMATS:
            raise ValueError(f"source {self.name}: unknown format {self.format!r}; choose one of {', '.join(readers.FORMATS)}")
        if self.uid_attribute not in UID_ATTRIBUTES:
            raise ValueError(f"source {self.name}: uid_attribute {self.uid_attribute!r} is not one of "
                             f"{', '.join(UID_ATTRIBUTES)}")
        if isinstance(self.manifest, tuple) and self.format != "dicom":
            raise ValueError(f"source {self.name}: several manifests are read for a dicom source only")

    @property
    def needs_phi_key(self) -> bool:
        return self.format == "dicom"

    def reader(self, modality: str, phi_key: bytes | None = None, max_pixels: int = images.DEFAULT_MAX_PIXELS):
        """The reader of this source; a dicom source needs the run's PHI key (``components.core.phi``)."""
        fmt = self.format or catalog.modality(modality).source_format
        root = Path(self.path).absolute()
        if fmt == "dicom":
            return self._dicom_reader(root, modality, phi_key, max_pixels)
        if fmt == "class_folders":
            options = {"default_label": self.default_label, "exclude": tuple(self.exclude),
                       **({"label_map": dict(self.label_map)} if self.label_map else {})}
            return readers.ClassFolderReader(root, **options)
        if fmt == "manifest":
            if not (self.manifest and self.image_column and self.label_column and self.label_map):
                raise ValueError(f"source {self.name}: a manifest source needs manifest, image_column, label_column "
                                 "and label_map")
            return readers.ManifestReader(root, self.manifest, self.image_column, self.label_column,
                                          {k: int(v) for k, v in self.label_map.items()}, self.patient_column,
                                          self.path_template)
        return readers.make_reader(fmt, root)

    def _dicom_reader(self, root: Path, modality: str, phi_key: bytes | None, max_pixels: int):
        if not (self.manifest and self.label_column and self.label_map):
            raise ValueError(f"source {self.name}: a dicom source needs manifest, label_column and label_map")
        manifests = self.manifest if isinstance(self.manifest, tuple) else (self.manifest,)
        return dicom_folder.DicomReader(root, modality, manifests, self.label_column,
                                        {k: int(v) for k, v in self.label_map.items()},
                                        phi.require(phi_key, f"DICOM source {self.name}"),
                                        image_column=self.image_column, uid_column=self.uid_column,
                                        uid_attribute=self.uid_attribute, patient_column=self.patient_column,
                                        abnormality_column=self.abnormality_column, path_template=self.path_template,
                                        max_pixels=max_pixels)

    def to_dict(self) -> dict:
        """JSON-able, and free of None (a KFP parameter cannot hold it): an unset option is left
        out, and a default label of None (quarantine unmapped folders) is written "none"."""
        out = {}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for k, v in dataclasses.asdict(self).items():
            if k in DICOM_OPTIONS and v == defaults[k]:
                continue          # unset: so other sources' dicts (cache keys, audit) stay as they were
            if k == "default_label" and v is None:
                out[k] = "none"
            elif v is not None:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


def from_dict(d: dict, base: str | Path | None = None) -> Source:
    known = {f.name for f in dataclasses.fields(Source)} | {"preset"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown source option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = dict(d)
    if "preset" in values:
        values = {**preset(values.pop("preset")), **values}
    if "path" not in values or "name" not in values:
        raise ValueError(f"a source needs a name and a path: {d}")
    path = Path(values["path"])
    if base is not None and not path.is_absolute():
        values["path"] = str(Path(base) / path)
    if str(values.get("default_label", "")).lower() == "none":
        values["default_label"] = None
    elif values.get("default_label") is not None:
        values["default_label"] = int(values["default_label"])
    if "exclude" in values:
        values["exclude"] = tuple(values["exclude"])
    if isinstance(values.get("manifest"), list):
        values["manifest"] = tuple(values["manifest"])
    return Source(**values)


def parse(value, base: str | Path | None = None) -> list[Source]:
    """Sources from a list of dicts (or of Sources), or from a JSON file of such a list; names
    must differ."""
    if isinstance(value, (str, Path)) and str(value).endswith(".json"):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"sources file {path} not found")
        return parse(json.loads(path.read_text()), base if base is not None else path.parent)
    if isinstance(value, (Source, dict)):
        value = [value]
    out = [v if isinstance(v, Source) else from_dict(v, base) for v in value]
    if not out:
        raise ValueError("no source given")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must differ: {names}")
    return out


def single(path: str | Path, name: str | None = None, **options) -> Source:
    """One source from a path (named after its folder, or file stem, unless ``name`` is given)."""
    path = Path(path)
    default = re.sub(r"[^A-Za-z0-9_.-]", "_", (path.stem if path.is_file() else path.name) or "source")[:64]
    return Source(name=name or default.lstrip("._-") or "source", path=str(path), **options)


def study_sources(modality: str, data_root: str | Path) -> list[Source]:
    """The sources the study reads for ``modality`` under its data root (``catalog``)."""
    return parse(list(catalog.modality(modality).study_sources), Path(data_root).resolve())
