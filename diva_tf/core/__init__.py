"""What every layer of diva_tf may import: user-facing errors, the registry lookup, the option-group
building blocks (`options.py`: fields with help text and ranges) and the version."""
