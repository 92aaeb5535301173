"""Data in and out: the (B, T, F) inputs a run reads and the zarr store it writes (format v1)."""
