"""Background work: the job runner, the local supervisor (and the Celery task)."""
