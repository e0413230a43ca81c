"""Hardware presets as TOML data, loaded by offload.planner.profile."""
