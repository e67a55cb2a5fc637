"""Uploads: read in memory (never written to disk), checked by content, not by extension.

Accepted: PNG, JPEG, BMP (and PGM/TIFF), grayscale, RGB, CMYK or 16-bit, up to a byte limit
and a pixel limit (a decompression bomb is refused before it is decoded), and DICOM Part 10
images (``application/dicom``: mammography MG, ultrasound US), read by components.imaging.dicom with the
model's modality, so its allow-list of SOP classes applies, through the standard's pixel path to
8 bits. A DICOM file that is sound but not an image the model reads (a Structured Report, an
ultrasound image sent to a mammography model) is 422; its header (without pixels) stays with the
upload for a report that refers to it. The image is
re-encoded as 8-bit PNG for the model server, so every model sees the same kind of input, and
no larger than the model needs: its longer side at most ``transport_side(model_size)``. Images
that size or smaller (every image of the datasets here) reach the model unchanged, so the
gateway answers exactly as the model server does; a 6000x6000 upload is shrunk (antialiased,
as the model's own resize is) instead of costing the model server hundreds of MB to decode.
An 8-bit gray or RGB PNG within that size is sent as it came, once its header and a full decode
have checked it (re-encoding it changed no pixel and cost time on every request).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import pydicom
from flask import Request

from components.imaging import dicom, images, inputstats


@dataclass(frozen=True)
class Upload:
    png: bytes          # what the model server gets
    stats: dict         # components.imaging.inputstats of the image as received (the drift histograms)
    dicom: pydicom.Dataset | None = None     # a DICOM upload's header, without pixels (for an SR)


# PNG modes whose pixels TensorFlow's decoder gives exactly as Pillow does (8-bit gray or RGB);
# 16-bit, palette, alpha and the rest are re-encoded after the gateway's own conversion
PASS_THROUGH_MODES = ("L", "RGB")
ACCEPTED = "Upload a PNG, JPEG or BMP image, or a DICOM image (mammography MG, ultrasound US)."
DICOM_TYPE = "application/dicom"


def transport_side(model_size: int) -> int:
    """The longest side sent to a model of input ``model_size``: 4x its input, and at least 1024."""
    return max(1024, 4 * model_size)


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InMemoryRequest(Request):
    """Werkzeug spools large multipart files to temporary files; keep them in memory."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


@dataclass(frozen=True)
class JsonLimits:
    """What a JSON body may cost. Parsing costs about 25 times the body's size when it is made of
    many small values (a 3 MB body of empty arrays: +75 MB), so both its size and its number of
    values are bounded before it is parsed. The largest legitimate JSON body is an OIP request of
    16 base64 ultrasound images of about 1 MB each (~22 MB), or one image of up to 18 MB: larger
    images go as multipart, application/dicom or OIP binary data. A request's values are a few
    dozen; each base64 string is one value, however long."""
    max_bytes: int = 24 << 20
    max_values: int = 10_000


def parse_json(data: bytes, limits: JsonLimits):
    """``data`` parsed, or UploadError (413 too large, 400 too many values, malformed, too deep).
    Every value after the first follows a ``,`` or ``:`` or opens with ``[``/``{``, so counting
    those bytes (base64 has none) bounds the objects the parser can build, before it builds any."""
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"the JSON body is {len(data):,} bytes; the limit is {limits.max_bytes:,} (send "
                               "larger images as multipart/form-data, application/dicom or OIP binary data)")
    values = sum(data.count(c) for c in (b",", b":", b"[", b"{"))
    if values > limits.max_values:
        raise UploadError(400, f"the JSON body holds more than {limits.max_values:,} values; a request needs a few")
    try:
        return json.loads(data)
    except RecursionError:               # e.g. 10,000 nested "[": deeper than any real body
        raise UploadError(400, "the JSON body is nested too deeply") from None
    except ValueError:
        raise UploadError(400, "the body is not valid JSON") from None


def read_image(request: Request, max_bytes: int, max_pixels: int, model_size: int | None = None,
               modality: str | None = None, json_limits: JsonLimits = JsonLimits()) -> Upload:
    """The uploaded image as 8-bit PNG bytes for a model of input ``model_size`` and
    ``modality`` (and its statistics), or UploadError saying what was wrong."""
    return prepare(_raw_bytes(request, json_limits), max_bytes, max_pixels, model_size, modality)


def prepare(data: bytes, max_bytes: int, max_pixels: int, model_size: int | None = None,
            modality: str | None = None) -> Upload:
    """Image file bytes -> the 8-bit PNG the model server gets, or UploadError."""
    if len(data) > max_bytes:
        raise UploadError(413, f"the image is {len(data):,} bytes; the limit is {max_bytes:,}")
    decoded, header = _decode(data, max_pixels, modality)
    stats = inputstats.of(decoded.pixels)
    fitted = decoded.fit(transport_side(model_size)) if model_size else decoded
    if fitted is decoded and decoded.source_format == "PNG" and decoded.source_mode in PASS_THROUGH_MODES:
        # an 8-bit PNG already within the transport size, checked and fully decoded: the model
        # server decodes these very bytes to the same pixels, so they go as they came
        return Upload(data, stats)
    return Upload(fitted.png(compress_level=1), stats, header)   # a transport copy: fast to write, lossless


def _decode(data: bytes, max_pixels: int, modality: str | None) -> tuple[images.DecodedImage, pydicom.Dataset | None]:
    """(8-bit pixels, the DICOM header or None): DICOM recognised by content, as every format."""
    try:
        if dicom.is_dicom(data):
            read = dicom.read(data, modality, max_pixels)
            return read.image, read.dataset
        return images.decode(data, max_pixels), None
    except (dicom.WrongKind, dicom.CodestreamDisagrees) as e:
        raise UploadError(422, f"{e}. {ACCEPTED}") from None
    except images.ImageRejected as e:
        reason = str(e)
        status = 413 if reason.startswith("image too large") else 415 if reason.startswith("unsupported") else 400
        raise UploadError(status, f"{reason}. {ACCEPTED}") from None


def _raw_bytes(request: Request, json_limits: JsonLimits) -> bytes:
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            names = sorted(request.files) or sorted(request.form)
            hint = f" (received field(s): {', '.join(names)})" if names else ""
            raise UploadError(400, f"no file in the form field 'image'{hint}")
        return upload.read()
    if request.mimetype == DICOM_TYPE:        # a Part 10 file as the whole body
        return request.get_data(cache=False)
    if request.is_json:
        body = parse_json(request.get_data(cache=False), json_limits)
        if not isinstance(body, dict) or not isinstance(body.get("image"), dict) or "b64" not in body["image"]:
            raise UploadError(400, 'the JSON body must be {"image": {"b64": "<base64 of the image file>"}}')
        try:
            return base64.b64decode(body["image"]["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise UploadError(400, "image.b64 is not valid base64") from None
    raise UploadError(415, "send the image as multipart/form-data (field 'image'), as JSON "
                           '{"image": {"b64": ...}}, or a DICOM file as the body with Content-Type application/dicom')
