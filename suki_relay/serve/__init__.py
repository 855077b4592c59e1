"""Running the relay as processes: gunicorn, its workers, and what they share.

    assemble.py     a worker's WSGI app: config loaded, store and spool opened, background
                    parts started, console mounted (``suki_relay.wsgi:app`` calls it)
    gunicorn.py     `suki-relay serve`: gunicorn with the relay's defaults and a safe reload
    runtime.py      the folder one running relay's processes share on this machine
    config_state.py which config a process runs; the last good one when an edit is broken
"""
