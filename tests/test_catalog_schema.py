import pytest

from components.core import catalog
from components.data import schema


def test_catalog_has_18_models_in_6_cohorts():
    names = catalog.all_model_names()
    assert len(names) == len(set(names)) == 18
    assert "histopathology-resnet50-unfrozen" in names
    cohorts = {(m, s): catalog.cohort_models(m, s) for m in catalog.MODALITIES for s in catalog.STRATEGIES}
    assert len(cohorts) == 6
    assert sorted(n for c in cohorts.values() for n in c) == sorted(names)


def test_model_names_round_trip_and_reject_unknown_parts():
    assert catalog.parse_model_name("ultrasound-vgg16-progressive") == ("ultrasound", "vgg16", "progressive")
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        catalog.model_name("ultrasound", "vgg19", "unfrozen")
    with pytest.raises(ValueError, match="choose one of mammography"):
        catalog.modality("mri")
    with pytest.raises(ValueError, match="not <modality>-<backbone>-<strategy>"):
        catalog.parse_model_name("ultrasound-vgg16")


def test_every_modality_names_both_labels():
    for spec in catalog.MODALITIES.values():
        assert len(spec.label_names) == 2 and all(spec.label_names)


def test_record_serializes_to_the_schema_and_back():
    record = schema.Record(b"\x89PNG...", 50, 42, 1, "8863", "8863/1/a.png", "histopathology")
    assert schema.deserialize(schema.serialize(record)) == record


def test_records_parse_with_the_tensorflow_feature_spec():
    import tensorflow as tf

    record = schema.Record(b"png-bytes", 3, 4, 0, "p1", "s1", "mammography")
    parsed = tf.io.parse_single_example(schema.serialize(record), schema.feature_spec())
    assert parsed[schema.LABEL].numpy() == 0
    assert parsed[schema.PATIENT].numpy() == b"p1"
    assert parsed[schema.WIDTH].numpy() == 4
