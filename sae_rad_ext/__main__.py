from sae_rad_ext.cli import app

app(prog_name="sae-rad")
