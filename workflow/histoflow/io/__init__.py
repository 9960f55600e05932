"""File-level helpers shared by all stages."""
