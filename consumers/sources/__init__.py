"""Where consumers read events from: one module per source."""
