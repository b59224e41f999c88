"""What operators use: health, Prometheus metrics, backups."""
