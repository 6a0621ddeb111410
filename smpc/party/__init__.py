"""A computing party: its configuration, durable store, upload and job handling, and its daemon."""
