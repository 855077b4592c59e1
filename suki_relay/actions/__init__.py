"""Built-in action types; each is registered as an entry point like any plugin."""
