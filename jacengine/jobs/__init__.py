"""Batch jobs: TOML job files, SLURM/PBS job-array scripts and dask-jobqueue clusters."""
