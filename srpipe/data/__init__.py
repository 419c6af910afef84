"""The low data layer every stage may read: band scales and the run's stats, the LR-to-label map, the grid, the HDF5
sample format, frames and clouds, the D4 views, the COG writer and S2's output units. It imports no stage."""
