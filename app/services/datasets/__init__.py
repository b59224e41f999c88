"""Dataset records and builds, and the administrator's server data roots."""
