"""Training presets (TOML), shipped inside the package as minigpt.configs."""
