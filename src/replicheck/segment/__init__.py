"""Masks for the segmentation level: built-in segmenters, external commands, mask similarity."""
