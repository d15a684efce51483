"""Keys, prices, the ledger, limits and usage. Imports no HTTP and nothing from `gateway`.

The job service calls it through a few plain functions: `pricing.quote`, `ledger.reserve`,
`ledger.settle`, `ledger.release`, and `keys.authenticate`.
"""
