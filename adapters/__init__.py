"""Upstream adapters: one file per upstream behind the contract in `adapters.base`."""
