"""digitloop services."""
