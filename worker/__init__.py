"""fluxgate's optional local GPU worker: a diffusers pipeline behind a small job API.

Installed with the `fluxgate[worker]` extra (torch, diffusers, transformers); started with
`fluxgate worker --model-path DIR`. Nothing here imports the gateway or billing, and the
gateway reaches it only over HTTP (`adapters/local_worker.py`).
"""
