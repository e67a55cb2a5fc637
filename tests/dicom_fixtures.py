"""Generated DICOM Part 10 files for tests (nothing from a real archive is committed).

Each generator returns the bytes of one instance, with the patient, study, series and instance
identifiers an archive would hold (UIDs freshly generated, a fixed fake patient). Pixel content
is a parameter (a numpy array), so a test can make a DICOM and a PNG of the same pixels; without
one a small synthetic image is drawn. ``encode`` writes any accepted transfer syntax: pydicom's
encoders (RLE, JPEG-LS, JPEG 2000), GDCM's (JPEG Lossless, JPEG Extended 12-bit) and Pillow's
(JPEG Baseline), all in memory.

Attack files: ``deflate_bomb`` (a 120 KB deflated body that inflates to 120 MB), ``header_bomb``
(a 1.6 KB header declaring 65535 x 65535 x 1000 frames), ``truncated`` (the file cut inside its
pixel data), ``short_pixel_data`` (fewer bytes than declared), ``truncated_frame`` (a cut
codestream), ``foreign_syntax`` (a transfer syntax outside the allow-list), ``traversal_uid`` (a
SOP Instance UID holding ``../``) and ``comprehensive_sr`` (a report, not an image).
"""
from __future__ import annotations

import io
import zlib

import gdcm
import numpy as np
from PIL import Image
from pydicom import config, dcmread, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence

MG_FOR_PRESENTATION = uid.DigitalMammographyXRayImageStorageForPresentation
MG_FOR_PROCESSING = uid.DigitalMammographyXRayImageStorageForProcessing
US_IMAGE = uid.UltrasoundImageStorage
US_MULTIFRAME = uid.UltrasoundMultiFrameImageStorage
# the two windows of the MONOCHROME2 mammogram (center, width), 12-bit stored values
MG_WINDOWS = ((2047.5, 4096.0), (1800.0, 1200.0))
TWIN_MAX = 2 ** 14 - 1            # the MONOCHROME1 twin stores TWIN_MAX - 4 x the 12-bit value


# -- pixels ------------------------------------------------------------------------------------

def breast(rows: int = 128, cols: int = 96, bits_stored: int = 12, seed: int = 0) -> np.ndarray:
    """A synthetic MLO-like breast (uint16, 0..2^bits-1): tissue against the chest wall on the
    left, denser near it, a round mass, noise; dark air around it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols]).reshape(2, 1, 1)
    inside = (x / 0.85) ** 2 + ((y - 0.5) / 0.48) ** 2 <= 1
    mass = 0.3 * np.exp(-(((x - 0.45) / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2))
    tissue = 0.35 + 0.3 * (1 - x) + mass + rng.normal(0, 0.03, (rows, cols))
    value = np.where(inside, tissue, 0.02 + rng.normal(0, 0.005, (rows, cols)))
    return np.clip(np.rint(value * (2 ** bits_stored - 1)), 0, 2 ** bits_stored - 1).astype(np.uint16)


def sonogram(rows: int = 96, cols: int = 128, seed: int = 0, color: bool = True) -> np.ndarray:
    """A synthetic B-mode frame (uint8): speckle in a fan, a dark lesion, and (in color) a yellow
    caliper mark as scanners burn into the image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols]).reshape(2, 1, 1)
    fan = (np.abs(x - 0.5) < 0.1 + 0.4 * y) & (y > 0.05)
    lesion = ((x - 0.5) / 0.12) ** 2 + ((y - 0.55) / 0.1) ** 2 < 1
    gray = np.where(fan, rng.gamma(2.0, 40.0, (rows, cols)), 0) * np.where(lesion, 0.25, 1.0)
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    if not color:
        return gray
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[rows // 5, cols // 4:cols // 4 + 8] = (255, 220, 0)
    return rgb


# -- instances ---------------------------------------------------------------------------------

def instance(sop_class: str, modality: str, **attributes) -> Dataset:
    """A dataset with the patient/study/series/instance identifiers of an archive's file."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "BC-0042", "Doe^Jane", "19640312", "F"
    ds.Modality, ds.StudyDate, ds.AccessionNumber = modality, "20261201", "A1234"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def mammogram(pixels: np.ndarray | None = None, *, bits_stored: int = 12, windows=MG_WINDOWS,
              voi_function: str | None = "LINEAR", photometric: str = "MONOCHROME2",
              transfer_syntax: str = uid.ExplicitVRLittleEndian, for_processing: bool = False,
              laterality: str = "L", view: str = "CC", **attributes) -> bytes:
    """A Digital Mammography X-Ray instance (For Presentation unless ``for_processing``) of
    ``pixels`` (uint16 stored values), with ``windows`` ((center, width), ...; empty: none)."""
    pixels = breast(bits_stored=bits_stored) if pixels is None else pixels
    ds = instance(MG_FOR_PROCESSING if for_processing else MG_FOR_PRESENTATION, "MG", **{
        "ImageLaterality": laterality, "ViewPosition": view,
        "PresentationIntentType": "FOR PROCESSING" if for_processing else "FOR PRESENTATION",
        "PresentationLUTShape": "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY",
        "RescaleSlope": 1, "RescaleIntercept": 0, "RescaleType": "US", **attributes})
    view_code = Dataset()
    view_code.CodeValue, view_code.CodingSchemeDesignator = {"CC": "R-10242", "MLO": "R-10226"}[view], "SRT"
    ds.ViewCodeSequence = Sequence([view_code])
    if windows:
        ds.WindowCenter, ds.WindowWidth = [w[0] for w in windows], [w[1] for w in windows]
        if voi_function:
            ds.VOILUTFunction = voi_function
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    return encode(ds, transfer_syntax)


def lut_sequence(lut: np.ndarray, first: int = 0, bits: int = 16, **attributes) -> Sequence:
    """A VOI LUT or Modality LUT Sequence of one item: input ``first + i`` -> ``lut[i]`` (``bits``
    deep); a Modality LUT item also needs ``ModalityLUTType``."""
    item = Dataset()
    item.LUTDescriptor = [len(lut) % 65536, first, bits]
    item.add_new("LUTData", "US", [int(v) for v in lut])     # US or OW: the standard allows both
    for keyword, value in {"LUTExplanation": "test LUT", **attributes}.items():
        setattr(item, keyword, value)
    return Sequence([item])


def twin_windows(windows=MG_WINDOWS) -> list[tuple[float, float]]:
    """The windows that give the MONOCHROME1 twin (stored TWIN_MAX - 4 v) the same 8-bit image
    as ``windows`` on v: LINEAR maps (x - (c - 1/2)) / (w - 1), so w' - 1 = 4 (w - 1) and the
    center moves to TWIN_MAX - 4 c + 5/2 (PS3.3 C.11.2.1.2.1)."""
    return [(TWIN_MAX - 4 * c + 2.5, 4 * w - 3) for c, w in windows]


def mammogram_monochrome1_twin(pixels: np.ndarray | None = None, *, windows=MG_WINDOWS,
                               transfer_syntax: str = uid.ExplicitVRLittleEndian, **attributes) -> bytes:
    """The same breast as ``mammogram(pixels, windows=windows)`` stored MONOCHROME1 at 14 bits
    (inverted: dense tissue low) with PresentationLUTShape INVERSE: the same 8-bit image after
    the standard pixel path."""
    pixels = breast() if pixels is None else pixels
    stored = (TWIN_MAX - 4 * pixels.astype(np.int32)).astype(np.uint16)
    return mammogram(stored, bits_stored=14, windows=twin_windows(windows), photometric="MONOCHROME1",
                     transfer_syntax=transfer_syntax, **attributes)


def ultrasound(pixels: np.ndarray | None = None, *, photometric: str = "RGB",
               transfer_syntax: str = uid.ExplicitVRLittleEndian, **attributes) -> bytes:
    """A US Image Storage instance of ``pixels`` (uint8 HxWx3 RGB or HxW gray); ``photometric``
    YBR_FULL stores them converted, YBR_RCT / YBR_ICT with JPEG 2000's color transform."""
    pixels = sonogram(color=photometric != "MONOCHROME2") if pixels is None else pixels
    ds = instance(US_IMAGE, "US", **attributes)
    if photometric == "YBR_FULL":
        ds.set_pixel_data(convert_color_space(pixels, "RGB", "YBR_FULL"), "YBR_FULL", 8, generate_instance_uid=False)
    else:
        ds.set_pixel_data(pixels, "RGB" if photometric in ("YBR_RCT", "YBR_ICT") else photometric, 8,
                          generate_instance_uid=False)
        ds.PhotometricInterpretation = photometric      # the color transform is the J2K encoder's
    return encode(ds, transfer_syntax)


def ultrasound_palette(indices: np.ndarray | None = None, palette: np.ndarray | None = None, **attributes) -> bytes:
    """A PALETTE COLOR US instance: uint8 ``indices`` into ``palette`` (256 x 3, uint16 entries
    over 0..65535, as the standard's 16-bit palettes)."""
    indices = sonogram(color=False) if indices is None else indices
    palette = default_palette() if palette is None else palette
    ds = instance(US_IMAGE, "US", **attributes)
    ds.set_pixel_data(indices, "PALETTE COLOR", 8, generate_instance_uid=False)
    for channel, (name, lut) in enumerate(zip(("Red", "Green", "Blue"), palette.T)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    return encode(ds, uid.ExplicitVRLittleEndian)


def default_palette() -> np.ndarray:
    """A 'hot' palette: black -> red -> yellow -> white (256 x 3, uint16)."""
    ramp = np.linspace(0, 3, 256)
    return (np.clip(np.stack([ramp, ramp - 1, ramp - 2], axis=1), 0, 1) * 65535).round().astype(np.uint16)


def ultrasound_jpeg(pixels: np.ndarray | None = None, quality: int = 95, **attributes) -> bytes:
    """A JPEG Baseline US instance, YBR_FULL_422 (4:2:2 chroma, as scanners write them)."""
    pixels = sonogram() if pixels is None else pixels
    ds = instance(US_IMAGE, "US", **attributes)
    ds.set_pixel_data(pixels, "RGB", 8, generate_instance_uid=False)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling="4:2:2")
    ds.PhotometricInterpretation, ds.LossyImageCompression = "YBR_FULL_422", "01"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return part10(ds, uid.JPEGBaseline8Bit)


def ultrasound_cine(frames: np.ndarray | None = None, transfer_syntax: str = uid.ExplicitVRLittleEndian,
                    **attributes) -> bytes:
    """A US Multi-frame instance of ``frames`` (uint8 NxHxW or NxHxWx3); by default 5 frames,
    frame k is the sonogram at 40 k + 20 brightness offset, so each frame is recognisable."""
    if frames is None:
        base = sonogram().astype(np.int32)
        frames = np.stack([np.clip(base // 2 + 40 * k + 20, 0, 255) for k in range(5)]).astype(np.uint8)
    ds = instance(US_MULTIFRAME, "US", FrameTime=33.3, CineRate=30, **attributes)
    ds.set_pixel_data(frames, "RGB" if frames.ndim == 4 else "MONOCHROME2", 8, generate_instance_uid=False)
    ds.FrameIncrementPointer = 0x00181063
    return encode(ds, transfer_syntax)


# -- encoding ----------------------------------------------------------------------------------

GDCM_SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit)


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` (native pixel data) as Part 10 bytes in ``transfer_syntax``."""
    transfer_syntax = uid.UID(transfer_syntax)
    if transfer_syntax in GDCM_SYNTAXES:
        frames = int(ds.get("NumberOfFrames", 1))
        size = len(ds.PixelData) // frames
        ds.PixelData = encapsulate([_gdcm_encode(ds, ds.PixelData[i * size:(i + 1) * size], transfer_syntax)
                                    for i in range(frames)])
        ds["PixelData"].VR = "OB"
        if transfer_syntax == uid.JPEGExtended12Bit:
            ds.LossyImageCompression = "01"
    elif transfer_syntax == uid.JPEG2000:
        ds.compress(transfer_syntax, j2k_psnr=[80], generate_instance_uid=False)
    elif transfer_syntax == uid.JPEGLSNearLossless:
        ds.compress(transfer_syntax, jls_error=2, generate_instance_uid=False)
    elif transfer_syntax.is_compressed:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    elif transfer_syntax == uid.ExplicitVRBigEndian and ds.BitsAllocated == 16:
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()   # OW words swap
    return part10(ds, transfer_syntax)


def part10(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _gdcm_encode(ds: Dataset, frame: bytes, transfer_syntax: uid.UID) -> bytes:
    """One frame encoded by GDCM in memory (as pydicom's own GDCM RLE encoder does)."""
    writer = gdcm.ImageWriter()          # owns the image: keep it alive until the end
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((ds.Columns, ds.Rows, 1))
    pi = gdcm.PhotometricInterpretation.GetPIType(ds.PhotometricInterpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(gdcm.PixelFormat(ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored,
                                          ds.BitsStored - 1, ds.PixelRepresentation))
    if ds.SamplesPerPixel > 1:
        image.SetPlanarConfiguration(0)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue(frame)
    image.SetDataElement(element)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(transfer_syntax))))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {transfer_syntax.name}")
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    return fragments.GetFragment(0).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")


# -- attacks -----------------------------------------------------------------------------------

def deflate_bomb(inflated_bytes: int = 120 * 1024 * 1024) -> bytes:
    """Deflated Explicit VR Little Endian whose body inflates to ``inflated_bytes`` of zeros
    (about 1/1000 of that on disk): pydicom inflates the whole body before reading a tag."""
    ds = instance(MG_FOR_PRESENTATION, "MG")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk, body = bytes(1 << 20), []
    for _ in range(inflated_bytes >> 20):
        body.append(compressor.compress(chunk))
    body.append(compressor.flush())
    return _preamble_and_meta(meta) + b"".join(body)


def header_bomb() -> bytes:
    """A small MG header declaring 65535 x 65535 x 1000 frames of 16-bit pixels (8.6 PB)."""
    ds = instance(MG_FOR_PRESENTATION, "MG", ImageLaterality="L", ViewPosition="CC",
                  ImageComments="x" * 600)     # about the size of a real header
    ds.set_pixel_data(np.zeros((8, 8), np.uint16), "MONOCHROME2", 12, generate_instance_uid=False)
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    return part10(ds, uid.ExplicitVRLittleEndian)


def truncated(data: bytes | None = None, keep: float = 0.6) -> bytes:
    """``data`` (by default a native mammogram) cut after ``keep`` of its bytes: the file ends
    inside the pixel data, as an interrupted transfer leaves it."""
    data = mammogram() if data is None else data
    return data[:int(len(data) * keep)]


def short_pixel_data() -> bytes:
    """A well-formed file whose Pixel Data holds half the bytes its header declares."""
    ds = instance(MG_FOR_PRESENTATION, "MG", ImageLaterality="L", ViewPosition="CC")
    ds.set_pixel_data(breast(), "MONOCHROME2", 12, generate_instance_uid=False)
    ds.PixelData = ds.PixelData[:len(ds.PixelData) // 2]
    return part10(ds, uid.ExplicitVRLittleEndian)


def traversal_uid() -> bytes:
    """A mammogram whose SOP Instance UID is ``../../etc/passwd`` (a UID used as a file name
    would write outside its folder)."""
    ds = dcmread(io.BytesIO(mammogram()))
    with config.disable_value_validation():
        ds.SOPInstanceUID = "../../etc/passwd"
        return part10(ds, uid.ExplicitVRLittleEndian)


def comprehensive_sr() -> bytes:
    """A Comprehensive SR (a report: text and codes, no pixels) about a mammogram."""
    ds = instance(uid.ComprehensiveSRStorage, "SR", ValueType="CONTAINER", ContinuityOfContent="SEPARATE",
                  CompletionFlag="COMPLETE", VerificationFlag="UNVERIFIED")
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "126000", "DCM", "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = Sequence([title])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType, finding.TextValue = "CONTAINS", "TEXT", "No suspicious mass."
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    finding.ConceptNameCodeSequence = Sequence([name])
    ds.ContentSequence = Sequence([finding])
    return part10(ds, uid.ExplicitVRLittleEndian)


def truncated_frame(data: bytes | None = None, keep: float = 0.5) -> bytes:
    """``data`` (by default a JPEG 2000 lossless mammogram) re-encapsulated with its frame's
    codestream cut after ``keep`` of its bytes: well-formed DICOM, a broken codestream."""
    data = mammogram(transfer_syntax=uid.JPEG2000Lossless) if data is None else data
    ds = dcmread(io.BytesIO(data))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[:int(len(frame) * keep)]])
    return part10(ds, ds.file_meta.TransferSyntaxUID)


def foreign_syntax(transfer_syntax: str = uid.MPEG2MPML) -> bytes:
    """A mammogram whose file meta names ``transfer_syntax`` (e.g. MPEG-2, HTJ2K), its native
    pixels encapsulated as they are: only the name is for the reader to judge."""
    ds = instance(MG_FOR_PRESENTATION, "MG")
    ds.set_pixel_data(breast(), "MONOCHROME2", 12, generate_instance_uid=False)
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    return part10(ds, transfer_syntax)


def _preamble_and_meta(meta: FileMetaDataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return bytes(128) + b"DICM" + buf.getvalue()
