"""What every layer of diva_tf may import: user-facing errors and the registry lookup."""
