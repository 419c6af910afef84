"""Curation: per-tile map (clouds, stats, raw samples) and per-region reduce (normalisation, split, HDF5 shards)."""
