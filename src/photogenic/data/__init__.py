"""Data stages: ingestion into versioned tar shards, and validation."""
