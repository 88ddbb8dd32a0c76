"""Response rewriters: one OpenAI shape out of every vLLM version a replica may run.

Pure and incremental (no I/O, no clock): the proxy feeds them upstream bytes and writes
what they return.

Streaming: ``make_stream_rewriter(profile, facts)`` gives a ``StreamRewriter``.
``feed(payload)`` takes the JSON of each upstream ``data:`` frame (not ``[DONE]``, not a
top-level error) and returns zero or more payloads to send as ``data: <payload>\\n\\n``;
a frame that needs no change comes back as the same bytes object, undecoded.
``finish()`` is called once, at ``[DONE]`` or when the upstream ended, and returns what
is still owed: held text, finish frames held for the usage frame, and a usage frame
when the client asked for usage but the replica sent none. ``usage`` is then the
replica's final counts, or an estimate marked ``estimated=True``.

Non-streaming: ``rewrite_response(payload, profile, facts)`` returns the body to send
(the same bytes object when unchanged) and its ``Usage``.

What is normalised (chat; completions only get the usage handling):
- reasoning: exactly the profile's field (``reasoning``, ``reasoning_content`` or both,
  equal), read from whichever the replica sent; no null reasoning keys in deltas;
- proxy-side parsing when the profile says the replica runs without parsers:
  ``<think>`` splitting and hermes ``<tool_call>`` extraction (see ``text``), with proxy
  call ids ``call_<24 hex>``; reasoning needs an opening ``<think>`` unless
  ``RequestFacts.think_prefilled`` says the chat template already opened it; as soon as
  a replica sends a reasoning field itself, the proxy stops looking for ``<think>``; a
  proxy-parsed call is streamed as a header delta (index, id, type, name,
  ``arguments: ""``) then one arguments fragment, once its ``</tool_call>`` arrived;
- tool-call deltas: see ``tools``; finish_reason and invalid arguments: see ``finish``
  (the vendor field ``tera_warning`` on a choice names calls whose arguments are not a
  JSON object);
- usage: the usage frame is dropped unless the client asked for it; per-chunk running
  usage passes only when the client asked for ``continuous_usage_stats``; totals are
  recomputed; ``completion_tokens_details.reasoning_tokens`` comes from the replica, or,
  when the proxy split the reasoning itself, from the reasoning's length (4 characters
  a token, at most completion_tokens), the same in a stream and in a body. Without
  replica usage, completion tokens are estimated: one per upstream text chunk when
  streaming (vLLM's default stream_interval), characters / 4 otherwise.

Known limits: a frame whose text is entirely held back (a possible tag) is dropped and
its logprobs with it, as vLLM does while its own parser holds text. When tool arguments
are invalid, the finish frame is held until the usage frame (the next frame) tells
whether the completion used its whole ``max_tokens`` budget.
"""

from __future__ import annotations

from tera_proxy.config import RewriteProfile

from .facts import RequestFacts, RequestKind, facts_from_request
from .finish import WARNING_KEY
from .response import rewrite_response
from .stream import StreamRewriter
from .usage import Usage

__all__ = [
    "WARNING_KEY",
    "RequestFacts",
    "RequestKind",
    "StreamRewriter",
    "Usage",
    "facts_from_request",
    "make_stream_rewriter",
    "rewrite_response",
]


def make_stream_rewriter(profile: RewriteProfile, facts: RequestFacts) -> StreamRewriter:
    return StreamRewriter(profile, facts)
