"""suki-relay: a verifying, durable webhook receiver for Suki ambient-session notifications.

Plugin authors import from :mod:`suki_relay.plugin`; everything else is the relay's own.
"""

__version__ = "0.1.0"
