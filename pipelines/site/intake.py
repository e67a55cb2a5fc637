"""The site's images, read as ingest reads a source (``components.data.sources`` and its
readers), decoded within the same budgets, and sent on as PNG bytes: the model sees what it
would see from an extracted record. Patients and files leave this module only as keyed
pseudonyms (``components.core.phi``): a DICOM reader makes them itself, any other reader's ids
are hashed here with the same kinds, so a patient gets the pseudonym ingest gives it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from components.core import phi
from components.data.sources import Source
from components.imaging import images

from pipelines.site.progress import Progress

ROW_SUFFIX = re.compile(r" \(row \d+\)$")


@dataclass
class SiteImages:
    pngs: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)      # pseudonyms
    quarantined: list[dict] = field(default_factory=list)  # {"image": pseudonym, "reason": redacted}


def read(sources: list[Source], modality: str, key: bytes, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> SiteImages:
    """Every readable, labelled image of ``sources``; the others quarantined with a reason."""
    out = SiteImages()
    readers = [(s, s.reader(modality, key, max_pixels)) for s in sources]
    units = [(s, reader, unit) for s, reader in readers for unit in reader.units()]
    progress = Progress("reading images", len(units))
    for source, reader, unit in units:
        for item in reader.items(unit):
            _take(out, item, source, key, max_pixels)
        progress.step()
    return out


def _take(out: SiteImages, item, source: Source, key: bytes, max_pixels: int) -> None:
    hashed = source.needs_phi_key          # a DICOM reader's ids are pseudonyms already
    patient = item.patient_id if hashed else phi.pseudonym(key, "patient", item.patient_id)
    image = item.source_id if hashed else phi.pseudonym(key, "image", item.source_id)
    try:
        if item.problem:
            raise images.ImageRejected(item.problem)
        if item.label is None:
            raise images.ImageRejected("no label")
        decoded = item.decoded or (images.from_raw_gray(item.data, *item.raw_shape) if item.raw_shape
                                   else images.decode(item.data, max_pixels))
    except Exception as e:      # one bad image is set aside, as ingest quarantines it
        reason = str(e) if isinstance(e, images.ImageRejected) else f"unreadable ({type(e).__name__})"
        path = ROW_SUFFIX.sub("", item.source_id)     # a refused manifest row's id names its row
        known = () if hashed else (path, item.patient_id, *Path(path).parts)
        out.quarantined.append({"image": image, "reason": phi.redact(reason, known)})
        return
    out.pngs.append(decoded.png())
    out.labels.append(int(item.label))
    out.patients.append(patient)
