"""A job's life: intake and validation of an upload, admission and fair share, waiting on datasets, sweeps, fine-tuning, records, listings, files and live events."""
