"""Vocabulary and plumbing any package may use: the catalog, artifact names, atomic writes,
digests, command-line helpers and PHI pseudonyms. No numpy, no TensorFlow."""
