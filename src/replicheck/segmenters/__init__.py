"""Mask makers for the segmentation level: built-in segmenters (:mod:`.builtin`), the user's own
command (:mod:`.external`), and where each image's mask comes from (:mod:`.sources`)."""

from .sources import BUILTIN, MaskSource, ct_parameters, parse_masks

__all__ = ["BUILTIN", "MaskSource", "ct_parameters", "parse_masks"]
