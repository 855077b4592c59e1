"""The operator console: see and repair deliveries in a browser, behind a sign-in.

Off unless ``console: {enabled: true}``; served by the relay's own WSGI app under
``console.path``. ``settings`` is imported by the config loader, so this package
imports nothing heavy itself: the app lives in ``console.app``.
"""
