"""Classification, top-N and segmentation of user images: warm contained processes, cold runs, and offload to Celery inference nodes."""
