"""Measuring models: statistics with cluster-bootstrap intervals, the predictions file, scoring and
blessing, the pictures, and the paired AUC test."""
