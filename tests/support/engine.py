"""The fast tier's engine as the disconnect tests watch it."""

from tests.helpers import call_deployment

CHAT = "smollm2-135m-instruct"

LONG = {"model": CHAT, "max_tokens": 800, "temperature": 0,  # 800 tokens of a story here
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}


def engine_running() -> int:
    """Requests in the fast tier's engine now, asked of its replica (not /health's last probe,
    which can be 2 s old)."""
    return call_deployment("fast", "graphserve", "running_requests")
