"""A data source: one dataset of one modality (a site, a public collection), named, in one of
the reader formats (``components.readers``), with the options its format takes.

A modality's pipeline reads one or more sources; every record keeps its source's name, and its
``source_id`` and ``patient_id`` are prefixed with it, so two sources may reuse image or patient
names and the split still groups patients within a source. Sources travel as JSON-able dicts (a
KFP pipeline parameter, ``--sources FILE.json``):

    [{"name": "busi", "path": "busi"},
     {"name": "busbra", "path": "busbra", "format": "manifest", "manifest": "bus_data.csv",
      "image_column": "ID", "path_template": "Images/{}.png", "label_column": "Pathology",
      "label_map": {"malignant": 1, "benign": 0}, "patient_column": "Case"}]

Relative paths are relative to a base folder (the study's data root, or the JSON file's folder).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from components import catalog, readers

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    format: str = ""                          # empty: the modality's default format
    label_map: dict[str, int] | None = None   # class folders: folder -> label; manifest: value -> label
    default_label: int | None = 0             # class folders: label of a folder not in the map (None: quarantine)
    manifest: str = ""                        # manifest: the CSV, relative to ``path``
    image_column: str = ""
    path_template: str = "{}"
    label_column: str = ""
    patient_column: str = ""
    exclude: tuple[str, ...] = field(default=("*_mask*",))   # class folders: files that are no images of the set

    def __post_init__(self):
        if not NAME.match(self.name or ""):
            raise ValueError(f"source name {self.name!r} must be letters, digits, '_', '.' or '-' (at most 64)")
        if self.format and self.format not in readers.FORMATS:
            raise ValueError(f"source {self.name}: unknown format {self.format!r}; choose one of {', '.join(readers.FORMATS)}")

    def reader(self, modality: str):
        fmt = self.format or catalog.modality(modality).source_format
        root = Path(self.path).absolute()
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

    def to_dict(self) -> dict:
        """JSON-able, and free of None (a KFP parameter cannot hold it): an unset option is left
        out, and a default label of None (quarantine unmapped folders) is written "none"."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            if k == "default_label" and v is None:
                out[k] = "none"
            elif v is not None:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


def from_dict(d: dict, base: str | Path | None = None) -> Source:
    known = {f.name for f in dataclasses.fields(Source)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown source option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = dict(d)
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
