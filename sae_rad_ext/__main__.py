from sae_rad_ext.cli.app import app

app(prog_name="sae-rad")
