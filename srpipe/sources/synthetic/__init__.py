"""The `synthetic` source: seeded S2 stacks generated from world coordinates, no labels."""
