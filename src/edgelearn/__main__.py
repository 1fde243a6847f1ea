from edgelearn.cli import app

app(prog_name="edgelearn")
