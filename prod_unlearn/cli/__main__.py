from prod_unlearn.cli import app

app()
