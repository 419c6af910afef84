"""The embedded `sample` source: one real S2 scene as the label, its S2 series simulated."""
