"""Delivering: what an action is, what it may call on, and the threads that run it.

    action.py      the contract every action follows (Action, Delivery, RelayContext)
    registry.py    action types from the entry-point group ``suki_relay.actions``
    deliverer.py   claim due deliveries, run their action, record each attempt
    retry.py       when to try again (backoff with jitter, per action)
    templates.py   the one Jinja environment (sandboxed) and its filters
    fetch.py       the ``fetch:`` option: Suki documents fetched for one attempt
    outbound.py    outbound HTTP: outcomes classified, replies bounded
    deadline.py    one deadline over a whole outbound exchange
    suki_api.py    Suki's follow-up API (login, token cache, links)
    oauth.py       credentials for an outbound API (bearer, OAuth2 client credentials)
    tokens.py      the one token cache (Suki login, OAuth2 tokens): refresh before expiry, once on 401

Built-in actions live in ``suki_relay.actions`` and reach all of this only through
``suki_relay.plugin``, as third-party actions do.
"""
