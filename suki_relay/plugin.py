"""The public surface for action plugins: import everything a plugin needs from here.

    from suki_relay.plugin import Action, Delivery, Option, PermanentError, outbound

    class PagerDutyAction(Action):
        options = {"routing_key": Option(str, required=True, secret=True, template=False)}

        def deliver(self, delivery: Delivery) -> str | None:
            resp = outbound.send(self.http, "POST", URL, json={...}, timeout=10,
                                 what="PagerDuty", delivery=delivery)
            outbound.raise_for_status(resp, "PagerDuty")
            return "sent"

What a plugin gets:

* :class:`Action`: the base class. ``options`` (a dict of :class:`Option`) is validated
  when the config loads; ``self.values`` holds the validated values (strings compiled as
  templates unless ``template=False``); ``self.render(option, delivery)`` renders one;
  ``self.http`` is a requests session for outbound calls that never reads ~/.netrc;
  ``self.relay`` is the :class:`RelayContext` (``templates``, ``base_dir``, and ``suki``,
  the top-level ``suki:`` section or None: the only way Suki's settings reach a plugin);
  ``self.max_concurrency`` the action's limit across all processes (size a connection
  pool by it); ``close()``, overridden, releases what the action holds across deliveries
  (pools) when the process stops delivering.
* :class:`Delivery`: one attempt of one event for one action (``event``, ``raw_body``,
  ``id``, ``event_id``, ``attempt``, ``received_at``, ``http_status``, and ``fetched``:
  the Suki documents the action's ``fetch:`` listed, by link relation, fetched just before
  ``deliver``; protected health information, never to be stored or logged). An action
  type that always needs a document returns its relations from ``fetches()``;
  :func:`note_text` turns a content document into plain text.
* Outcomes: return normally for done; raise :class:`RetryableError` to be tried again
  with backoff, :class:`PermanentError` to fail for good, :class:`InDoubtError` when the
  target may have acted and sending again could act twice (the delivery waits as
  ``unknown`` for an operator); all are :class:`DeliveryError`. ``delivery.taken_over``
  says the previous attempt's outcome is unknown: its process died mid-attempt, or stopped
  and handed the delivery back while the attempt was under way.
* ``outbound``: ``send`` (transport failures become RetryableError, ``outbound.NotSent``
  when no connection was made, so the target cannot have the request; with ``delivery=``
  the HTTP status is recorded for `suki-relay show`), ``raise_for_status`` (408, 429,
  5xx retryable with Retry-After; other non-2xx permanent), ``new_session``.
* :data:`MASK` and :func:`mask_secret_keys` for ``preview()`` (dry runs).
* For actions that render or fetch more: :func:`render_value` and :func:`map_strings`
  (templates over nested values), :func:`slack_escape`; :data:`RELATIONS`,
  :data:`CONTENT_RELATIONS` and :func:`unknown_relations` (Suki's link relations);
  ``deadline`` (one deadline over a whole exchange on a socket of one's own) and ``oauth``
  (bearer, client-credentials and SMART Backend Services tokens, cached; imported when
  first used, so a config without an action that authenticates never loads it); an action
  that signs with keys the EHR must know returns them from ``public_keys()`` and the relay
  publishes them at ``/.well-known/jwks.json``.

The built-in actions import only from here, as third-party ones do (an import-linter
contract in pyproject.toml holds them to it).

Test helpers for plugins are in :mod:`suki_relay.testing`.
"""

from typing import TYPE_CHECKING, Any

from suki_relay.deliver import deadline, outbound
from suki_relay.deliver.action import MASK, Action, Delivery, RelayContext, mask_secret_keys
from suki_relay.deliver.fetch import CONTENT_RELATIONS, RELATIONS, note_text, unknown_relations
from suki_relay.deliver.outbound import new_session, raise_for_status, send
from suki_relay.deliver.templates import map_strings, render_value, slack_escape
from suki_relay.errors import (
    ConfigError,
    DeliveryError,
    InDoubtError,
    PermanentError,
    Problem,
    RelayError,
    RetryableError,
)
from suki_relay.options import Option

if TYPE_CHECKING:
    from suki_relay.deliver import oauth

__all__ = [
    "CONTENT_RELATIONS",
    "MASK",
    "RELATIONS",
    "Action",
    "ConfigError",
    "Delivery",
    "DeliveryError",
    "InDoubtError",
    "Option",
    "PermanentError",
    "Problem",
    "RelayContext",
    "RelayError",
    "RetryableError",
    "deadline",
    "map_strings",
    "mask_secret_keys",
    "new_session",
    "note_text",
    "oauth",
    "outbound",
    "raise_for_status",
    "render_value",
    "send",
    "slack_escape",
    "unknown_relations",
]


def __getattr__(name: str) -> Any:
    """``oauth``, imported by the first action that uses it (``from suki_relay.plugin
    import oauth`` included): what is not configured is not imported."""
    if name == "oauth":
        from suki_relay.deliver import oauth

        return oauth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
