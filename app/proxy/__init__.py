"""The OpenAI-compatible proxy: ``/v1/chat/completions`` requests as interruptible chat runs."""

from app.proxy.errors import openai_error, openai_error_for_status
from app.proxy.exchange import ChatExchange
from app.proxy.job import run_chat
from app.proxy.request import ProxyRequest, parse_proxy_request

__all__ = [
    "ChatExchange",
    "ProxyRequest",
    "openai_error",
    "openai_error_for_status",
    "parse_proxy_request",
    "run_chat",
]
