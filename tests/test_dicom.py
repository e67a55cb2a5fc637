"""components.imaging.dicom on generated files (tests.dicom_fixtures): every accepted transfer syntax
decodes to the pixels the standard's pixel path gives (computed here independently, lossless
exactly), MONOCHROME1 equals its MONOCHROME2 twin, windows, VOI LUTs, rescale, color, the
multi-frame rule, and every attack refused quickly, with a reason, without allocating."""
import io
import time
import tracemalloc

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid

from components.imaging import dicom, images
from tests import dicom_fixtures as fx

LOSSLESS = (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian, uid.RLELossless,
            uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless)
LOSSY = (uid.JPEGExtended12Bit, uid.JPEGLSNearLossless, uid.JPEG2000)
CODECS = (uid.RLELossless, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit, uid.JPEGLSLossless,
          uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000)


def linear(v, center, width, exact=False, bits=12):
    """PS3.3 C.11.2.1.2.1 (LINEAR) / C.11.2.1.3.2 (LINEAR_EXACT) onto 0..255."""
    v = np.asarray(v, np.float64)
    unit = (v - center) / width + 0.5 if exact else (v - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(np.rint(np.clip(unit, 0, 1) * 255), 0, 255).astype(np.uint8)


def rejected(data: bytes, *args, **kwargs) -> str:
    with pytest.raises(dicom.DicomRejected) as e:
        dicom.read(data, *args, **kwargs)
    return str(e.value)


def cost(fn):
    """(seconds, peak traced bytes) of one call."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        fn()
    except images.ImageRejected:
        pass
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def test_part10_is_recognised_by_content():
    assert dicom.is_dicom(fx.mammogram()) and dicom.is_dicom(fx.comprehensive_sr())
    assert not dicom.is_dicom(b"\x89PNG\r\n\x1a\n" + bytes(200)) and not dicom.is_dicom(b"DICM" + bytes(200))
    assert "not a DICOM Part 10 file" in rejected(bytes(128) + b"DICX" + bytes(100))


@pytest.mark.parametrize("syntax", LOSSLESS + LOSSY, ids=lambda s: s.name)
def test_each_transfer_syntax_gives_the_windowed_pixels(syntax):
    pixels = fx.breast()
    read = dicom.read(fx.mammogram(pixels, transfer_syntax=syntax), "mammography")
    expected = linear(pixels, *fx.MG_WINDOWS[0])
    got = read.image.pixels
    assert got.dtype == np.uint8 and got.shape == pixels.shape and read.image.source_format == "DICOM"
    if syntax in LOSSLESS:
        assert np.array_equal(got, expected)
    else:                   # lossy codecs at high quality: within a grey level or two
        assert np.abs(got.astype(int) - expected).max() <= 2 and np.abs(got.astype(int) - expected).mean() < 0.5


@pytest.mark.parametrize("syntax", (uid.ExplicitVRLittleEndian, uid.JPEGLSLossless, uid.JPEG2000Lossless),
                         ids=lambda s: s.name)
def test_monochrome1_twin_gives_the_monochrome2_image(syntax):
    pixels = fx.breast(seed=3)
    mono2 = dicom.read(fx.mammogram(pixels, transfer_syntax=syntax)).image.pixels
    mono1 = dicom.read(fx.mammogram_monochrome1_twin(pixels, transfer_syntax=syntax))
    assert mono1.dataset.PhotometricInterpretation == "MONOCHROME1" and mono1.dataset.BitsStored == 14
    assert np.array_equal(mono1.image.pixels, mono2)
    # dense tissue is bright in both (MONOCHROME1 is inverted once, after VOI)
    assert mono2[64, 5] > mono2[5, 90]


def test_the_window_is_chosen_and_a_missing_one_refused():
    pixels = fx.breast()
    data = fx.mammogram(pixels)
    assert np.array_equal(dicom.read(data, window=1).image.pixels, linear(pixels, *fx.MG_WINDOWS[1]))
    assert not np.array_equal(dicom.read(data, window=0).image.pixels, dicom.read(data, window=1).image.pixels)
    assert "there is no window 2" in rejected(data, window=2)


def test_linear_exact_and_sigmoid():
    pixels = fx.breast()
    (center, width), _ = fx.MG_WINDOWS
    exact = dicom.read(fx.mammogram(pixels, voi_function="LINEAR_EXACT")).image.pixels
    assert np.array_equal(exact, linear(pixels, center, width, exact=True))
    sigmoid = dicom.read(fx.mammogram(pixels, voi_function="SIGMOID")).image.pixels
    expected = np.rint(255 / (1 + np.exp(-4 * (pixels - center) / width))).astype(np.uint8)
    assert np.abs(sigmoid.astype(int) - expected).max() <= 1


def test_without_a_window_bits_stored_sets_the_scale_not_the_image_range():
    faint = (fx.breast() // 4).astype(np.uint16)                # a dark image: at most ~1/4 of 12 bits
    got = dicom.read(fx.mammogram(faint, windows=())).image.pixels
    assert np.array_equal(got, np.rint(faint * (255 / 4095)).astype(np.uint8))
    assert got.max() < 80                                       # not stretched to 255 by its own max


def test_rescale_then_window_in_output_units_and_a_voi_lut_sequence():
    pixels = fx.breast()
    rescaled = fx.mammogram(pixels, windows=((3000.0, 4000.0),), RescaleSlope=2, RescaleIntercept=-1000)
    assert np.array_equal(dicom.read(rescaled).image.pixels, linear(pixels * 2.0 - 1000, 3000.0, 4000.0))
    lut = np.clip(np.arange(4096) * 16 - 8000, 0, 65535).astype(np.uint16)      # a steep 16-bit VOI LUT
    with_lut = fx.mammogram(pixels, windows=(), VOILUTSequence=fx.lut_sequence(lut))
    assert np.array_equal(dicom.read(with_lut).image.pixels, np.rint(lut[pixels] * (255 / 65535)).astype(np.uint8))
    # a Modality LUT Sequence (here inverting, 16-bit), then a window on its output
    modality = np.arange(4096, dtype=np.uint16)[::-1] * 16
    with_modality_lut = fx.mammogram(pixels, windows=((30000.0, 40000.0),), RescaleSlope=None, RescaleIntercept=None,
                                     ModalityLUTSequence=fx.lut_sequence(modality, ModalityLUTType="US"))
    assert np.array_equal(dicom.read(with_modality_lut).image.pixels, linear(modality[pixels], 30000.0, 40000.0))


def test_color_ultrasound_becomes_rgb():
    rgb = fx.sonogram()
    assert np.array_equal(dicom.read(fx.ultrasound(rgb), "ultrasound").image.pixels, rgb)
    assert np.array_equal(dicom.read(fx.ultrasound(rgb, transfer_syntax=uid.RLELossless)).image.pixels, rgb)
    assert np.array_equal(dicom.read(fx.ultrasound(rgb, photometric="YBR_RCT",
                                                   transfer_syntax=uid.JPEG2000Lossless)).image.pixels, rgb)
    for data, tolerance in ((fx.ultrasound(rgb, photometric="YBR_FULL"), 1),
                            (fx.ultrasound(rgb, photometric="YBR_ICT", transfer_syntax=uid.JPEG2000), 3)):
        got = dicom.read(data).image.pixels
        assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb).max() <= tolerance
    jpeg = dicom.read(fx.ultrasound_jpeg(rgb))          # YBR_FULL_422: chroma halved, so edges blur
    assert jpeg.image.pixels.shape == rgb.shape and np.abs(jpeg.image.pixels.astype(int) - rgb).mean() < 2
    gray = fx.sonogram(color=False)
    assert np.array_equal(dicom.read(fx.ultrasound(gray, photometric="MONOCHROME2")).image.pixels, gray)


def test_palette_color_goes_through_its_palette():
    indices = fx.sonogram(color=False)
    got = dicom.read(fx.ultrasound_palette(indices)).image.pixels
    assert np.array_equal(got, (fx.default_palette()[indices] >> 8).astype(np.uint8))


def test_multiframe_reads_the_middle_frame_unless_told_and_decodes_only_it():
    frames = np.stack([np.full((64, 80), 10 * k, np.uint8) for k in range(7)])
    data = fx.ultrasound_cine(frames)
    middle = dicom.read(data, "ultrasound")
    assert middle.frame == 3 and np.all(middle.image.pixels == 30)
    assert dicom.read(data, frame=6).image.pixels[0, 0] == 60 and dicom.read(data, frame=0).frame == 0
    assert "frame 7 does not exist: the instance has 7 frame(s)" in rejected(data, frame=7)
    # an RLE loop of 40 frames of 256x256 RGB (7.9 MB decoded): reading one costs about one frame
    loop = np.stack([np.full((256, 256, 3), k, np.uint8) for k in range(40)])
    rle = fx.ultrasound_cine(loop, transfer_syntax=uid.RLELossless)
    assert dicom.read(rle).image.pixels[0, 0, 0] == 20
    _, peak = cost(lambda: dicom.read(rle))
    assert peak < 4 * loop[0].nbytes + 2 * len(rle), peak


def test_the_header_comes_back_without_pixels():
    read = dicom.read(fx.mammogram(laterality="R", view="MLO"))
    ds = read.dataset
    assert "PixelData" not in ds and ds.PatientID == "BC-0042" and ds.ImageLaterality == "R"
    assert ds.ViewPosition == "MLO" and ds.Modality == "MG" and uid.UID(ds.SOPInstanceUID).is_valid
    assert read.frame == 0 and read.image.source_mode == "MONOCHROME2"


def test_kinds_of_instance_allowed_per_modality():
    assert dicom.read(fx.mammogram(for_processing=True), "mammography").dataset.SOPClassUID == fx.MG_FOR_PROCESSING
    assert dicom.read(fx.ultrasound(), None).image.pixels.ndim == 3
    wrong = rejected(fx.ultrasound(), "mammography")
    assert "Ultrasound Image Storage" in wrong and "this model reads mammography" in wrong
    assert "Modality is 'CT'" in rejected(fx.mammogram(Modality="CT"))
    with pytest.raises(dicom.WrongKind, match="whole-slide microscopy .* out of scope"):
        dicom.read(fx.mammogram(), "histopathology")


def test_a_structured_report_is_refused_as_a_report():
    with pytest.raises(dicom.WrongKind) as e:
        dicom.read(fx.comprehensive_sr(), "mammography")
    assert "Comprehensive SR Storage" in str(e.value) and "Structured Report, not an image" in str(e.value)
    assert isinstance(e.value, images.ImageRejected)


def test_the_deflate_bomb_is_refused_from_the_file_meta():
    bomb = fx.deflate_bomb()
    assert len(bomb) < 200_000          # 120 MB once inflated
    seconds, peak = cost(lambda: dicom.read(bomb))
    assert "Deflated Explicit VR Little Endian" in rejected(bomb)
    assert seconds < 0.5 and peak < 2_000_000, (seconds, peak)


def test_other_transfer_syntaxes_are_refused_by_name():
    assert "unsupported DICOM transfer syntax MPEG2 Main Profile / Main Level" in rejected(fx.foreign_syntax())
    assert "High-Throughput JPEG 2000" in rejected(fx.foreign_syntax(uid.HTJ2KLossless))


def test_the_header_bomb_is_refused_before_any_allocation():
    bomb = fx.header_bomb()
    assert len(bomb) < 2000
    seconds, peak = cost(lambda: dicom.read(bomb))
    assert "image too large: 65535x65535" in rejected(bomb)
    assert seconds < 0.5 and peak < 2_000_000, (seconds, peak)
    # within the pixel limit, but 1000 frames over the byte budget
    ds = pydicom.dcmread(io.BytesIO(bomb))
    ds.Rows = ds.Columns = 4000
    many = fx.part10(ds, uid.ExplicitVRLittleEndian)
    assert "1000 frame(s) of 4000x4000x1 at 16 bits declare 32,000,000,000 bytes" in rejected(many)


def test_truncated_files_and_pixel_data_are_clear_errors():
    assert "truncated DICOM pixel data: 12,288 bytes, the header declares 24,576" in rejected(fx.short_pixel_data())
    assert "truncated DICOM pixel data" in rejected(fx.truncated())
    for syntax in (uid.RLELossless, uid.JPEG2000Lossless):
        assert "the file ends before its data set does" in rejected(fx.truncated(fx.mammogram(transfer_syntax=syntax)))


@pytest.mark.parametrize("syntax", CODECS, ids=lambda s: s.name)
def test_a_cut_codestream_is_refused_quickly(syntax):
    cut = fx.truncated_frame(fx.mammogram(transfer_syntax=syntax))
    seconds, _ = cost(lambda: dicom.read(cut))
    assert f"corrupt or truncated {syntax.name} pixel data" in rejected(cut)
    assert seconds < 1.0, seconds


def test_a_uid_with_a_path_in_it_is_refused():
    reason = rejected(fx.traversal_uid())
    assert "invalid SOPInstanceUID" in reason and "passwd" not in reason


def test_a_full_size_mammogram_makes_no_float_copy_of_itself():
    """3328 x 4084 at 12 bits: the pixel path is a lookup table, so reading the DICOM costs no
    more memory than decoding a 16-bit PNG of it, plus less than one float64 copy (109 MB;
    the time it takes is measured by ``python -m bench.dicom``)."""
    pixels = fx.breast(4084, 3328)
    data = fx.mammogram(pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    png = buf.getvalue()
    assert dicom.read(data).image.pixels.shape == (4084, 3328)
    assert cost(lambda: dicom.read(data))[1] < cost(lambda: images.decode(png))[1] + 100e6


def test_a_secondary_capture_is_read_by_its_modality():
    """CBIS-DDSM's digitised films are Secondary Capture instances of Modality MG: read for
    mammography, refused for ultrasound, and a Secondary Capture of another modality refused."""
    pixels = fx.breast(seed=9)
    sc = fx.mammogram(pixels, SOPClassUID=uid.SecondaryCaptureImageStorage)
    assert np.array_equal(dicom.read(sc, "mammography").image.pixels, dicom.read(fx.mammogram(pixels)).image.pixels)
    with pytest.raises(dicom.WrongKind, match="Secondary Capture of mammography"):
        dicom.read(sc, "ultrasound")
    for other in ("OT", None):
        extra = {"Modality": other} if other else {}
        data = fx.mammogram(pixels, SOPClassUID=uid.SecondaryCaptureImageStorage, **extra)
        if other is None:                      # no Modality at all
            ds = pydicom.dcmread(io.BytesIO(data))
            del ds.Modality
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
        with pytest.raises(dicom.WrongKind, match="Secondary Capture of Modality"):
            dicom.read(data, "mammography")


def _lying_codestream(data: bytes, rows: int, cols: int) -> bytes:
    """``data`` (one compressed frame) with its codestream's own dimensions changed to
    rows x cols, the DICOM header untouched: JPEG 2000's SIZ (and its one tile), JPEG's SOF."""
    import struct

    from pydicom.encaps import encapsulate, get_frame

    ds = pydicom.dcmread(io.BytesIO(data))
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    if (at := frame.find(b"\xff\x51")) >= 0:                            # SIZ: Xsiz, Ysiz, XTsiz, YTsiz
        struct.pack_into(">II", frame, at + 6, cols, rows)
        struct.pack_into(">II", frame, at + 22, cols, rows)
    else:
        at = next(frame.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc3") if frame.find(m) >= 0)
        struct.pack_into(">HH", frame, at + 5, rows, cols)              # SOF: Y, X
    ds.PixelData = encapsulate([bytes(frame)])
    return fx.part10(ds, ds.file_meta.TransferSyntaxUID)


@pytest.mark.parametrize("syntax", [uid.JPEG2000Lossless, uid.JPEGBaseline8Bit])
def test_a_codestream_that_disagrees_with_its_header_is_refused_before_it_is_decoded(syntax):
    """The header says 64 x 64; the codestream, which the decoder sizes its output by, says
    6000 x 6000. Refused from the codestream's header, at most +20 MB (decoding would cost 100+)."""
    if syntax == uid.JPEG2000Lossless:
        honest = fx.encode(pydicom.dcmread(io.BytesIO(fx.mammogram(np.full((64, 64), 700, np.uint16)))), syntax)
    else:
        honest = fx.ultrasound_jpeg(np.full((64, 64, 3), 90, np.uint8))
    assert dicom.read(honest).image.pixels.shape[:2] == (64, 64)
    bomb = _lying_codestream(honest, 6000, 6000)
    assert len(bomb) < 6000
    seconds, peak = cost(lambda: dicom.read(bomb))
    reason = rejected(bomb)
    assert "codestream declares 6000x6000" in reason and "header 64x64" in reason and "must agree" in reason
    assert peak < 20_000_000 and seconds < 1.0, (seconds, peak)
