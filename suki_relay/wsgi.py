"""The WSGI entry point: ``gunicorn 'suki_relay.wsgi:app'`` (config from SUKI_RELAY_CONFIG).

With no flags it behaves as ``suki-relay serve``: the workers of one master share a folder
(runtime.py) for summed metrics and for the last config that loaded, which a reload with
a broken actions.yaml keeps serving.
"""

from suki_relay.serve.runtime import share_with_siblings

_shared = share_with_siblings()  # before prometheus_client is imported

from suki_relay.serve.assemble import create_app  # noqa: E402

app = create_app(shared=_shared)
