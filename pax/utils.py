"""Training-step helpers and structure checks."""

from pax._src.core.structure import check_same_structure as check_same_structure
from pax._src.nn.rng_seq import LossFnOutput as LossFnOutput
from pax._src.nn.rng_seq import RngSeq as RngSeq
from pax._src.training import build_update_fn as build_update_fn

__all__ = ["LossFnOutput", "RngSeq", "build_update_fn", "check_same_structure"]
