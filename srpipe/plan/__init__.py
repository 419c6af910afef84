"""Plan: the AOI -> the run's grid of the tiles its source covers, and the resolved config."""
