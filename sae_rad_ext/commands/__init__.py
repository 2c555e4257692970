"""CLI sub-commands (each registers on sae_rad_ext.cli.app)."""
