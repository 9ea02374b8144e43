"""modelgate auth service."""
