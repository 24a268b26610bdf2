"""What the collector and the pipeline share: event fields and schema version, the
refused-input error, the spool's segment format, config helpers. It imports nothing of Beacon."""
