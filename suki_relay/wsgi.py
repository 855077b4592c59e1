"""The WSGI entry point: ``gunicorn 'suki_relay.wsgi:app'`` (config from SUKI_RELAY_CONFIG).

With no flags it behaves as ``suki-relay serve``: the workers of one master share a folder
(serve/runtime.py) for summed metrics and for the last config that loaded, which a reload
with a broken actions.yaml keeps serving. With the ``gunicorn.conf.py`` that ``suki-relay
init`` writes, gunicorn's hooks start and stop each worker's parts; without it, the worker
does so itself (serve/hooks.py).
"""

from suki_relay.serve.hooks import wsgi_app

app = wsgi_app()
