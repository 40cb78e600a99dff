"""Distillery: the pipeline's stages (tasks/<stage>.py) and their building blocks."""
