"""Whole networks built from native `pax.nn` layers (see `pax.nets`)."""
