"""Data side: manifest, DALI pipelines, reference loader."""
