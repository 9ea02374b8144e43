"""modelgate inference service."""
