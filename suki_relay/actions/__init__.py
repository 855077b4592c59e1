"""Built-in action types. Each is registered as an entry point in the group
``suki_relay.actions`` and imports only ``suki_relay.plugin``, exactly as a third-party
plugin does.
"""
