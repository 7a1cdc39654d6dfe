"""Simulated users: they draw, read the answers, and label some of them."""
