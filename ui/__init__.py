"""digitloop ui."""
