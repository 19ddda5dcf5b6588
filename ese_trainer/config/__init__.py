"""Config: a run's settings from YAML and the command line (unknown keys, renamed keys, types), and the CLI entry."""
