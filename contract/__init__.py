"""What the collector and the pipeline share: event fields and schema version, the spool's
segment format, config helpers. It imports nothing of Beacon."""
