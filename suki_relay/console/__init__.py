"""The operator console: see and repair deliveries in a browser, behind a sign-in.

Off unless ``console: {enabled: true}``; served by the relay's own WSGI app under
``console.path`` (``suki_relay.serve.assemble`` mounts it). Its section of actions.yaml
is declared in ``suki_relay.config.console``.

    app.py     the console's WSGI app: routing, sessions, CSRF, security headers
    auth.py    passwords, signed session cookies, sign-in throttling
    views.py   the pages

"""
