"""Names of the run folder's record files that the driver writes and the comparison reads."""

CONFIG_FILENAME = "config.yaml"
"""The resolved config of the run (every key, after the presets); rewritten at each launch."""
HISTORY_FILENAME = "config_history.jsonl"
"""One line per launch: time, commit, the keys changed against the saved config, the step resumed from."""
