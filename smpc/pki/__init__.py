"""Keys and certificates of a federation: provisioning, kits and the public directory."""
