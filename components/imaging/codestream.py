"""What a compressed DICOM frame says of itself: the rows, columns, components and precision in
its codestream's own header (JPEG 2000's SIZ, JPEG's and JPEG-LS's SOF), read without decoding.
A decoder sizes its output by these, not by the DICOM header, so they must agree with the header
before anything is decoded: an 890-byte JPEG 2000 file whose header says 64 x 64 and whose SIZ
says 6000 x 6000 would otherwise cost 100+ MB before it was refused."""
from __future__ import annotations

import pydicom
from pydicom import uid
from pydicom.encaps import get_frame


class Unreadable(ValueError):
    """The frame's codestream header cannot be read."""


class Disagrees(ValueError):
    """The codestream declares other dimensions, components or precision than the header."""


JPEG_2000 = frozenset({uid.JPEG2000Lossless, uid.JPEG2000})


def codestream_parameters(frame: bytes, syntax: uid.UID) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, bits) a JPEG, JPEG-LS or JPEG 2000 frame declares in its own
    header (SOF / SOF55 / SIZ), read without decoding; None when it has none to read."""
    if syntax in JPEG_2000:
        import openjpeg

        p = openjpeg.get_parameters(frame)
        return int(p["rows"]), int(p["columns"]), int(p["samples_per_pixel"]), int(p["precision"])
    from pydicom.pixels.utils import _get_jpg_parameters      # pydicom's own SOF reader

    p = _get_jpg_parameters(frame)
    return (p["height"], p["width"], p["components"], p["precision"]) if "height" in p else None


def check(ds: pydicom.Dataset, syntax: uid.UID, index: int, frames: int) -> None:
    """A compressed frame must declare, in its own codestream, the header's rows, columns and
    samples, and a precision from the header's Bits Stored to its Bits Allocated (encoders such
    as GDCM write 16 for 12 bits stored in 16): a decoder sizes its output by the codestream, so
    within these the output is what the budgets were checked against."""
    if not syntax.is_compressed or syntax == uid.RLELossless:     # RLE carries no dimensions of its own
        return
    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=frames)
        declared = codestream_parameters(frame, syntax)
    except Exception as e:
        raise Unreadable(f"corrupt {syntax.name} pixel data: its codestream header cannot be read "
                         f"({type(e).__name__})") from None
    if declared is None:
        raise Unreadable(f"corrupt {syntax.name} pixel data: the frame has no codestream header")
    rows, cols, samples, bits = declared
    stored, allocated = int(ds.BitsStored), int(ds.BitsAllocated)
    if (rows, cols, samples) != (int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel)) \
            or not stored <= bits <= allocated:
        raise Disagrees(f"the {syntax.name} codestream declares {cols}x{rows} with {samples} component(s) of "
                        f"{bits} bits, the DICOM header {ds.Columns}x{ds.Rows} with {ds.SamplesPerPixel} of "
                        f"{stored} stored in {allocated}: they must agree")
