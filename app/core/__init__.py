"""Settings, the job/dataset layout and runner protocol, status words, service errors: no Flask, no SQL, importable inside the sandbox."""
