"""Outbound signed result webhooks (Standard Webhooks v1).

`signing.py` (secrets, signatures, sealed secrets), `tables.py` (the `webhook_deliveries`
outbox), `outbox.py` (payload, rows written in the job's terminal transaction), `delivery.py`
(the worker: claims, POSTs, retries), `service.py` (wiring and request-time checks). A package
rather than the single `gateway/webhooks.py` the layout sketch plans: together they pass the
~400-line mark, and each part has its own contract.
"""
