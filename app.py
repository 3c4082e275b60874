"""The entry point for `flask run` and gunicorn (`gunicorn app:app`)."""

from wattfare_demo import create_app

app = create_app()
