"""Per-kind rules: defaults, validation and allocation for each resource type served."""
