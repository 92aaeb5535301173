"""Data in and out: the (B, T, F) inputs a run reads and the zarr store it writes (format 3; formats 1 and 2 are still read)."""
