"""Training: the loop, its losses, checkpoints, distributed ranks, and the delineation net's stage."""
