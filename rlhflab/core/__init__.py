"""Config loading, run directories, logging and seeding. Standard library and PyYAML only."""
