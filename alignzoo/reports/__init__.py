"""Reports: tables, plots and image grids from stored results."""
