"""Read an untrusted DICOM Part 10 file (mammography MG, ultrasound US) into the 8-bit image the
models see, or say exactly why not. One reader for the gateway and the extract step, so "which
DICOM can be read, and what its pixels mean" is decided once, as components.imaging.images does for PNG.

Refused, each before the work it guards: no preamble + ``DICM``, or a transfer syntax outside
TRANSFER_SYNTAXES, from the file meta alone (pydicom inflates a Deflated body whole before any
check could run: 66 KB become 100 MB); a SOP class or Modality outside IMAGE_CLASSES or the asked
modality's (an SR, another modality's image; histopathology's whole-slide DICOM is out of scope):
``WrongKind``; dimensions x frames over the pixel or byte budget, pixel data shorter than the
header declares, invalid UIDs, a compressed frame whose codestream declares other dimensions
than the header (``components.imaging.codestream``: ``CodestreamDisagrees``): before any pixel is
decoded.

The pixel path is the standard's (PS3.3 C.11, C.7.6.3): Modality LUT (sequence, or Rescale
Slope/Intercept), VOI (the VOI LUT Sequence, else window ``window``: LINEAR, LINEAR_EXACT,
SIGMOID), MONOCHROME1 inverted after VOI; with no VOI the Bits Stored range (never the image's
own min/max) maps onto 0..255, so a faint image stays faint. It runs once over every stored value
(at most 65,536) as a lookup table, never on float copies of a 14-megapixel mammogram. Color:
YBR_FULL(_422) to RGB, YBR_RCT/ICT come back RGB from the JPEG 2000 decoders, PALETTE COLOR
through its palette.

Multi-frame (ultrasound cine loops): ``frame=None`` reads the middle frame (NumberOfFrames // 2),
and only that frame is decoded: a sweep is recorded around the lesion, so the middle is where it
is most likely in view, while the first frames are often the probe settling.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, convert_color_space,
                            get_decoder)
from pydicom.pixels.utils import as_pixel_options, get_expected_length

from components.imaging import codestream, images
from components.imaging.quiet import quiet_pydicom

TRANSFER_SYNTAXES = frozenset({
    uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian, uid.RLELossless,
    uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000})
# SOP class -> (product modality, the DICOM Modality its instances carry)
IMAGE_CLASSES = {uid.DigitalMammographyXRayImageStorageForPresentation: ("mammography", "MG"),
                 uid.DigitalMammographyXRayImageStorageForProcessing: ("mammography", "MG"),
                 uid.UltrasoundImageStorage: ("ultrasound", "US"),
                 uid.UltrasoundMultiFrameImageStorage: ("ultrasound", "US")}
# Secondary Capture (CBIS-DDSM's digitised films, many PACS exports): the product modality comes
# from the instance's Modality, checked once the body is read
SECONDARY_CAPTURE = {"MG": "mammography", "US": "ultrasound"}
OUT_OF_SCOPE = {"histopathology": "DICOM is not read for histopathology: whole-slide microscopy (VL Whole Slide "
                                  "Microscopy Image Storage) is out of scope; send the patch as PNG or JPEG"}
PHOTOMETRICS = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR"}
DEFAULT_MAX_BYTES = 1 << 30   # all frames as declared; one is decoded, but no header may claim more
# CharLS (pyjpegls) spends about 4 s of CPU on a corrupt JPEG-LS stream before it gives up,
# whatever the image size; GDCM decodes the same streams and fails at once
PLUGINS = {uid.JPEGLSLossless: "gdcm", uid.JPEGLSNearLossless: "gdcm"}
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


class DicomRejected(images.ImageRejected):
    """The bytes are no DICOM image this product can read; ``str(e)`` is the reason."""


class CodestreamDisagrees(DicomRejected):
    """A compressed frame's codestream declares other dimensions than the header (a 422)."""


class WrongKind(DicomRejected):
    """Sound DICOM, but not an image this product (or the asked modality) reads."""


@dataclass(frozen=True)
class DicomImage:
    image: images.DecodedImage   # the uint8 frame the models see, after the standard pixel path
    dataset: pydicom.Dataset     # the header without PixelData (for SRs, patient grouping)
    frame: int                   # which frame of a multi-frame instance this is


def is_dicom(data: bytes) -> bool:
    """A Part 10 file: a 128-byte preamble, then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read(data: bytes, modality: str | None = None, max_pixels: int = images.DEFAULT_MAX_PIXELS,
         max_bytes: int = DEFAULT_MAX_BYTES, frame: int | None = None, window: int = 0) -> DicomImage:
    """Decode one frame of a DICOM image to 8-bit gray or RGB; ``modality`` (a product modality,
    None: any) limits the SOP classes; ``window`` picks among the instance's VOI windows/LUTs."""
    if modality is not None and modality not in {m for m, _ in IMAGE_CLASSES.values()}:
        raise WrongKind(OUT_OF_SCOPE.get(modality, f"DICOM is not read for {modality}"))
    try:
        with quiet_pydicom():         # its warnings quote header values: PHI
            return _read(data, modality, max_pixels, max_bytes, frame, window)
    except DicomRejected:
        raise
    except Exception as e:     # fuzzed headers reach pydicom code paths that raise anything
        raise DicomRejected(f"unreadable DICOM ({type(e).__name__}: {_detail(e)})") from None


def _detail(e: Exception) -> str:
    """One line: pydicom lists each plugin's reason under a heading (GDCM's only say it gave None)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and "NoneType" not in line]
    return "; ".join(lines[1:] if lines and lines[0].endswith(":") else lines)[:200] or "the decoder returned no frame"


def _read(data, modality, max_pixels, max_bytes, frame, window) -> DicomImage:
    meta = _file_meta(data)
    _check_kind(meta.get("MediaStorageSOPClassUID"), None, modality)     # before the body is parsed
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.buffer = None                  # the dataset must not keep the whole file alive
    if "SOPClassUID" not in ds:       # pydicom drops the whole data set when the file ends inside it
        raise DicomRejected("truncated or corrupt DICOM: the file ends before its data set does")
    _check_kind(ds.SOPClassUID, ds.get("Modality") or "", modality)
    _check_uids(ds)
    frames = _check_size(ds, meta.TransferSyntaxUID, max_pixels, max_bytes)
    index = frames // 2 if frame is None else frame
    if not 0 <= index < frames:
        raise DicomRejected(f"frame {index} does not exist: the instance has {frames} frame(s)")
    try:
        codestream.check(ds, meta.TransferSyntaxUID, index, frames)
    except codestream.Disagrees as e:
        raise CodestreamDisagrees(str(e)) from None
    except codestream.Unreadable as e:
        raise DicomRejected(str(e)) from None
    pixels, photometric = _decode(ds, meta.TransferSyntaxUID, index, frames)
    if not pixels.dtype.isnative:     # Explicit VR Big Endian: the lookup tables are native
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    image = _color(pixels, ds, photometric) if photometric not in ("MONOCHROME1", "MONOCHROME2") \
        else _gray_table(ds, pixels.dtype, window)[_as_unsigned(pixels)]
    del ds.PixelData
    return DicomImage(images.DecodedImage(image, "DICOM", str(ds.PhotometricInterpretation)), ds, index)


def _file_meta(data: bytes) -> pydicom.Dataset:
    if not is_dicom(data):
        raise DicomRejected("not a DICOM Part 10 file (no 128-byte preamble followed by 'DICM')")
    fp = io.BytesIO(data)
    fp.seek(132)
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                        stop_when=lambda tag, vr, length: tag >> 16 != 2)      # group 0002 only
    # convert every element now: were one to fail, pydicom would re-read the meta as implicit VR
    # and might find another transfer syntax than the one checked here
    list(meta)
    syntax = meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DicomRejected("the DICOM file meta has no Transfer Syntax UID")
    if syntax == uid.DeflatedExplicitVRLittleEndian:
        raise DicomRejected("unsupported DICOM transfer syntax Deflated Explicit VR Little Endian: its body is "
                            "inflated whole before it can be checked; send it uncompressed or with a pixel codec")
    if syntax not in TRANSFER_SYNTAXES:
        raise DicomRejected(f"unsupported DICOM transfer syntax {syntax.name} ({syntax}); accepted: uncompressed, "
                            "RLE, JPEG, JPEG Lossless, JPEG-LS and JPEG 2000")
    return meta


def _check_kind(sop_class: str | None, dicom_modality: str | None, modality: str | None) -> None:
    """SOP class (and Modality, once the body is read) in the allow-list of ``modality``."""
    if sop_class is None:
        raise DicomRejected("the DICOM file names no SOP Class UID")
    sop_class = uid.UID(sop_class)
    if sop_class == uid.SecondaryCaptureImageStorage:
        if dicom_modality is not None and dicom_modality not in SECONDARY_CAPTURE:
            raise WrongKind(f"the DICOM file is a Secondary Capture of Modality {dicom_modality!r}; accepted: "
                            f"{', '.join(SECONDARY_CAPTURE)}")
        product = SECONDARY_CAPTURE.get(dicom_modality)
        if modality is not None and product is not None and product != modality:
            raise WrongKind(f"the DICOM file is a Secondary Capture of {product}; this model reads {modality}")
        return
    if sop_class not in IMAGE_CLASSES:
        is_report = "SR" in sop_class.name.split()        # Basic Text / Enhanced / Comprehensive ... SR Storage
        what = "a Structured Report, not an image" if is_report else "not an image this product reads"
        raise WrongKind(f"the DICOM file is a {sop_class.name or sop_class} instance: {what} "
                        "(accepted: Digital Mammography X-Ray and Ultrasound images, and Secondary Captures of them)")
    product, expected = IMAGE_CLASSES[sop_class]
    if modality is not None and product != modality:
        raise WrongKind(f"the DICOM file is {sop_class.name} ({product}); this model reads {modality}")
    if dicom_modality and dicom_modality != expected:
        raise WrongKind(f"the DICOM file is {sop_class.name} but its Modality is {dicom_modality!r}, not {expected!r}")


def _check_uids(ds: pydicom.Dataset) -> None:
    """Study, series and instance UIDs are digits and dots: they go into reports and references."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword) or "")
        if len(value) > 64 or not UID_PATTERN.fullmatch(value):
            # the value is not repeated: an error body or log line must never carry a UID
            raise DicomRejected(f"invalid {keyword} (a UID is digits and dots, at most 64 characters)")


def _check_size(ds: pydicom.Dataset, syntax: uid.UID, max_pixels: int, max_bytes: int) -> int:
    """The number of frames, once the header's dimensions fit the budgets and the pixel data
    holds what they declare (native) -- nothing is decoded or allocated before this."""
    if "PixelData" not in ds:
        raise DicomRejected("the DICOM image has no Pixel Data")
    rows, cols, samples, bits, stored = (int(ds[k].value) for k in ("Rows", "Columns", "SamplesPerPixel",
                                                                    "BitsAllocated", "BitsStored"))
    frames = int(ds.get("NumberOfFrames") or 1)
    if rows * cols > max_pixels:
        raise DicomRejected(f"image too large: {cols}x{rows} pixels exceeds the limit of {max_pixels:,}")
    total = rows * cols * samples * bits // 8 * frames
    if total > max_bytes:
        raise DicomRejected(f"image too large: {frames} frame(s) of {cols}x{rows}x{samples} at {bits} bits declare "
                            f"{total:,} bytes, over the budget of {max_bytes:,}")
    if min(rows, cols) < images.MIN_SIDE or frames < 1:
        raise DicomRejected(f"image too small: {cols}x{rows}, {frames} frame(s) (at least {images.MIN_SIDE} px a side)")
    if bits not in (8, 16) or not 1 <= stored <= bits or samples not in (1, 3):
        raise DicomRejected(f"unsupported DICOM pixels: {samples} sample(s) of {stored} bits in {bits} "
                            "(accepted: 1 or 3 samples, 8 or 16 bits allocated)")
    if ds.PhotometricInterpretation not in PHOTOMETRICS:
        raise DicomRejected(f"unsupported DICOM Photometric Interpretation {ds.PhotometricInterpretation!r}")
    if not syntax.is_compressed and len(ds.PixelData) < (expected := get_expected_length(ds)):
        raise DicomRejected(f"truncated DICOM pixel data: {len(ds.PixelData):,} bytes, "
                            f"the header declares {expected:,}")
    return frames


def _decode(ds: pydicom.Dataset, syntax: uid.UID, index: int, frames: int) -> tuple[np.ndarray, str]:
    """Frame ``index``'s stored values (HxW) or samples (HxWx3), and their photometric."""
    try:
        if syntax == uid.JPEGExtended12Bit and ds.BitsStored > 8:
            return _gdcm_jpeg12(ds, index, frames), ds.PhotometricInterpretation
        arr, properties = get_decoder(syntax).as_array(ds, index=index, validate=True,
                                                       decoding_plugin=PLUGINS.get(syntax, ""),
                                                       **as_pixel_options(ds, view_only=True))
    except Exception as e:
        raise DicomRejected(f"corrupt or truncated {syntax.name} pixel data ({_detail(e)})") from None
    return arr, properties["photometric_interpretation"]


def _gdcm_jpeg12(ds: pydicom.Dataset, index: int, frames: int) -> np.ndarray:
    """12-bit JPEG Extended (old mammography archives): GDCM decodes it, but pydicom's GDCM plugin
    declines 12-bit precision, so the frame goes to GDCM directly, in memory as that plugin does."""
    import gdcm

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(get_frame(ds.PixelData, index, number_of_frames=frames))
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((ds.Columns, ds.Rows, 1))
    image.SetDataElement(element)
    pi = gdcm.PhotometricInterpretation.GetPIType(str(ds.PhotometricInterpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, ds.BitsStored, ds.BitsStored - 1, ds.PixelRepresentation))
    buffer = image.GetBuffer() if ds.SamplesPerPixel == 1 else None       # None: GDCM could not decode it
    arr = np.frombuffer((buffer or "").encode("utf-8", "surrogateescape"), "<i2" if ds.PixelRepresentation else "<u2")
    if arr.size != ds.Rows * ds.Columns:
        raise ValueError("GDCM decoded no complete frame")
    return arr.reshape(ds.Rows, ds.Columns)


def _as_unsigned(arr: np.ndarray) -> np.ndarray:
    """The same bits as unsigned integers (a view): the lookup table's index."""
    return arr.view(f"u{arr.dtype.itemsize}") if arr.dtype.kind == "i" else arr


def _gray_table(ds: pydicom.Dataset, dtype: np.dtype, window: int) -> np.ndarray:
    """uint8 output for every bit pattern of ``dtype``: Modality LUT, VOI, MONOCHROME1 inversion."""
    stored = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(dtype)
    values = apply_modality_lut(stored, ds)
    low, high = _modality_range(ds)
    if ds.get("VOILUTSequence"):
        entries, first, depth = ds.VOILUTSequence[_choose(len(ds.VOILUTSequence), window, "VOI LUT")].LUTDescriptor
        # pydicom indexes the LUT with uint16 offsets: clip first, so no value wraps around
        values = apply_voi(np.clip(np.rint(values), first, first + (entries or 65536) - 1).astype(np.int64), ds, window)
        low, high = 0, 2 ** depth - 1        # the LUT's output range (PS3.3 C.11.2.1.1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        _choose(ds["WindowCenter"].VM, window, "window")
        values = apply_windowing(values, ds, window)      # onto the modality range [low, high]
    else:
        _choose(1, window, "window")    # none: the Bits Stored range, as if one window spanned it
    if high == low:
        raise DicomRejected("invalid DICOM Modality LUT: every stored value maps to one output")
    unit = (np.asarray(values, dtype=np.float64) - low) / (high - low)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        # inverted after VOI (C.7.6.3.1.2); DX/MG PresentationLUTShape INVERSE restates this, not again
        unit = 1.0 - unit
    return np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)


def _modality_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The Modality LUT's output range, as the VOI (and pydicom's windowing) take it."""
    if ds.get("ModalityLUTSequence"):
        return 0, 2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    bits = ds.BitsStored
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2 ** bits - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low, high = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (low, high))
    return low, high


def _choose(count: int, index: int, what: str) -> int:
    if not 0 <= index < count:
        raise DicomRejected(f"the image has {count} {what}(s); there is no {what} {index}")
    return index


def _color(arr: np.ndarray, ds: pydicom.Dataset, photometric: str) -> np.ndarray:
    """HxWx3 uint8 RGB of a color frame."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)[..., :3]
        return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb    # 16-bit entries: k*257 -> k
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    if arr.dtype != np.uint8 or ds.BitsStored != 8:
        scale = np.arange(2 ** (8 * arr.dtype.itemsize)) * (255 / (2 ** ds.BitsStored - 1))
        arr = np.clip(np.rint(scale), 0, 255).astype(np.uint8)[_as_unsigned(arr)]
    return np.ascontiguousarray(arr)
