"""Protocol families: what sites compute locally, what parties compute, what is opened."""
