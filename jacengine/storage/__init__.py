"""Data in and out: the (B, T, F) inputs a run reads and the zarr store it writes (format 2; format 1 is still read)."""
