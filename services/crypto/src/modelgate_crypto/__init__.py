"""modelgate crypto service."""
