"""The data sources eomae reads: one module per source, defined once."""
