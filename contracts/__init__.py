"""The contracts between digitloop's parts, at the bottom of the import graph."""
