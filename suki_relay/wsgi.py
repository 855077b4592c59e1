"""The WSGI entry point: ``gunicorn 'suki_relay.wsgi:app'`` (config from SUKI_RELAY_CONFIG)."""

from .app import create_app

app = create_app()
