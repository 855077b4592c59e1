"""Running the relay as processes: gunicorn, its workers, and what they share.

    assemble.py     a worker's WSGI app and its background parts, made, not started
                    (``suki_relay.wsgi:app`` calls it); the console mounted
    process.py      one process's parts, started and stopped in a known order
    hooks.py        gunicorn's hooks that call it (serve, and the gunicorn.conf.py that
                    `init` writes); the wsgi module's fallback without that file
    gunicorn.py     `suki-relay serve`: gunicorn with the relay's defaults and a safe reload
    runtime.py      the folder one running relay's processes share on this machine
    config_state.py which config a process runs; the last good one when an edit is broken
"""
