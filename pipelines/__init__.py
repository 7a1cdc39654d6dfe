"""digitloop pipelines."""
