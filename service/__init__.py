"""SlimServe's serving side: the CLI, and (with the service issue) the BentoML service."""
