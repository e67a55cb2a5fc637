"""Untrusted bytes to pixels: image and DICOM decoding within byte, pixel and decoded-size
budgets, and the cheap per-image statistics drift is measured on. No TensorFlow: the gateway and
the DICOM node use it."""
