"""stilts_xling: English intermediate-task training and zero-shot cross-lingual evaluation on XTREME."""

__version__ = "0.1.0"
