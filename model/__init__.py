"""digitloop model."""
