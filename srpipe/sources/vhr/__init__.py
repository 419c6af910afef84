"""VHR labels of the user's own: rasters from files or listed by a STAC collection."""
