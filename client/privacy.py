"""The client side of differential privacy: Flower's clipping mods, switched by the run config.

Flower applies the mods given to `ClientApp(mods=...)` to every message, while its
`fixedclipping_mod` and `adaptiveclipping_mod` reply with an error to any message that
lacks the server's clipping norm. `dp_clipping_mod` therefore runs one of them only on
train messages of a run whose `dp` is client-fixed or client-adaptive, and passes every
other message straight to the handler.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedgraft.config import RunConfig
from fedgraft.strategies.privacy import DpMode

__all__ = ["dp_clipping_mod"]


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's train update with Flower's mod for the run's client-side dp mode."""
    category = msg.metadata.message_type.split(".", 1)[0]
    if category != MessageType.TRAIN:
        return call_next(msg, context)

    mode = DpMode(RunConfig.from_run_config(context.run_config).dp)
    if mode is DpMode.CLIENT_FIXED:
        return fixedclipping_mod(msg, context, call_next)
    if mode is DpMode.CLIENT_ADAPTIVE:
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
