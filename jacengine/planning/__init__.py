"""Planning: where a memory budget becomes blocks. Framework-neutral: no TensorFlow, no zarr."""
