"""What the views and the worker call: plain Python with explicit arguments (settings, store, workspace, user); errors are app.core.errors.ServiceError."""
