"""`python -m petclf ...` is the same as the `petclf` command."""

from petclf.cli import app

app(prog_name="petclf")
