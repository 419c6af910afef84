"""The `sentinelhub` source: S2 and BYOC labels from Sentinel Hub, its client and its cost."""
