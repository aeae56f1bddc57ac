"""Stateful metrics as modules: `Mean`, `Sum`, `Accuracy` and `Collection`.

This layer builds on the core (`pax.Module`) and the base files only. The public face is
`pax.metrics`.
"""
