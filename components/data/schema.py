"""The project's tf.Example schema: the one place that names the features of a record.

Every record the data layer writes, and every reader in training, evaluation and validation,
goes through this module, so a feature is renamed in one place only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

IMAGE = "image/encoded"    # PNG bytes, 8-bit, 1 (grayscale) or 3 (RGB) channels
HEIGHT = "image/height"
WIDTH = "image/width"
LABEL = "label"            # int64, 0 or 1 (catalog.Modality.label_names)
PATIENT = "patient_id"     # bytes; "<source>/<patient>" (the image id when the source has no patient)
SOURCE_ID = "source_id"    # bytes; "<source>/<where in it>" (path, or file#index): unique in a run
MODALITY = "modality"      # bytes; a catalog modality name
SOURCE = "source"          # bytes; the name of the data source (site, dataset) the record came from

INT_FEATURES = (HEIGHT, WIDTH, LABEL)
BYTES_FEATURES = (IMAGE, PATIENT, SOURCE_ID, MODALITY, SOURCE)


@dataclass(frozen=True)
class Record:
    image_png: bytes
    height: int
    width: int
    label: int
    patient_id: str
    source_id: str
    modality: str
    source: str = ""

    def with_image(self, image_png: bytes, height: int, width: int) -> "Record":
        return dataclasses.replace(self, image_png=image_png, height=height, width=width)


def _protos():
    """tf.Example's protos, imported when a record is first read or written: importing them
    imports all of TensorFlow (seconds), which a step that finds its outputs cached never needs."""
    from tensorflow.core.example import example_pb2, feature_pb2

    return example_pb2, feature_pb2


def serialize(record: Record) -> bytes:
    example_pb2, feature_pb2 = _protos()

    def ints(v):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v)]))

    def byts(v):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[v]))

    features = {
        IMAGE: byts(record.image_png),
        HEIGHT: ints(record.height),
        WIDTH: ints(record.width),
        LABEL: ints(record.label),
        PATIENT: byts(record.patient_id.encode()),
        SOURCE_ID: byts(record.source_id.encode()),
        MODALITY: byts(record.modality.encode()),
        SOURCE: byts(record.source.encode()),
    }
    return example_pb2.Example(features=feature_pb2.Features(feature=features)).SerializeToString()


def deserialize(data: bytes) -> Record:
    feature = _protos()[0].Example.FromString(data).features.feature

    def one(name, kind, default=None):
        if default is not None and name not in feature:      # records written before the feature existed
            return default
        values = getattr(feature[name], kind).value
        if len(values) != 1:
            raise ValueError(f"feature {name!r} must hold exactly one value, found {len(values)}")
        return values[0]

    return Record(
        image_png=one(IMAGE, "bytes_list"),
        height=one(HEIGHT, "int64_list"),
        width=one(WIDTH, "int64_list"),
        label=one(LABEL, "int64_list"),
        patient_id=one(PATIENT, "bytes_list").decode(),
        source_id=one(SOURCE_ID, "bytes_list").decode(),
        modality=one(MODALITY, "bytes_list").decode(),
        source=one(SOURCE, "bytes_list", b"").decode(),
    )


def feature_spec():
    """``tf.io.parse_example`` spec for the whole schema (training and evaluation input)."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.int64) for name in INT_FEATURES}
    spec.update({name: tf.io.FixedLenFeature([], tf.string) for name in BYTES_FEATURES})
    spec[SOURCE] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec
