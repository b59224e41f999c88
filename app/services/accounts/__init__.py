"""Users: accounts, passwords, browser sessions and API tokens (who may see what is app.services.access)."""
