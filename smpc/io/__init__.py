"""Reading a site's local files: input tables and fedavg model files."""
