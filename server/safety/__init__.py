"""Content safety in Azure's contract, judged by Llama Guard 3 (docs/SAFETY.md).

guards.py: where the guard runs (a second engine here, or a llamaserve deployment over HTTP);
moderation.py: what its verdicts do to a request (400 content_filter, finish_reason content_filter, ...);
requesters.py: checks as the requester's work (a few at a time per key, charged to the key's token limit).
"""
