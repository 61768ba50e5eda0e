"""Image decoding and data sources."""
