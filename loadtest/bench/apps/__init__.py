"""The comparison servers the benchmark runs beside Beacon (each one a process of its own)."""
