"""Data in: the sources, the four data-quality dimensions and their
corrections, the GX gate and quarantine, the splits and the encoder's fit."""
