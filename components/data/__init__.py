"""Sources to records to splits: the example schema, TFRecord files, the source readers (DICOM
folders among them) and Macenko stain normalization."""
