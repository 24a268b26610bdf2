"""The side-by-side HTTP benchmark (`make bench`, `python -m loadtest.bench`)."""
