"""The `suki-relay` command. User mistakes print cleanly and exit 1; usage errors exit 2.

    main.py     the parser and the commands that run the relay (serve, worker, check, send, ...)
    store.py    the commands over the store: events, show, deliveries, replay, reroute, prune
    spool.py    the commands over this node's spool
    init.py     `suki-relay init`: the starter actions.yaml and templates
    output.py   what every command shares: tables, --json, the settings a command reads
"""
