"""Inference: a shard of tiles -> SR COGs; its input windows, fitted scales and the record for mosaic."""
