"""`beacon`: the command line; it dispatches to each part's commands."""
