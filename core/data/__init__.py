"""Datasets on disk: folders and labels (``datasets``), decoding any poster file (``images``), the synthetic demo set (``demo``)."""
