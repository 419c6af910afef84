"""The `stac` source: S2 L2A COGs from STAC archives, the search, signing and its cost."""
