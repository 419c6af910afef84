"""Mosaic: SR tiles -> zone COGs, a VRT per date, and the run's STAC catalog."""
