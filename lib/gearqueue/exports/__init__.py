"""Exports people can look at: a zip of the table, its metadata and a heatmap."""
