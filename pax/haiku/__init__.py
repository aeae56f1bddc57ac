"""Haiku interop: wrap Haiku modules (`pax.from_haiku`), ready Haiku layers, weight porting."""

from pax._src.haiku.config import HaikuConfig as HaikuConfig
from pax._src.haiku.conv import conv_1d as conv_1d
from pax._src.haiku.conv import conv_1d_transpose as conv_1d_transpose
from pax._src.haiku.conv import conv_2d as conv_2d
from pax._src.haiku.conv import conv_2d_transpose as conv_2d_transpose
from pax._src.haiku.dropout import dropout as dropout
from pax._src.haiku.init import hk_init as hk_init
from pax._src.haiku.layers import avg_pool as avg_pool
from pax._src.haiku.layers import batch_norm_2d as batch_norm_2d
from pax._src.haiku.layers import embed as embed
from pax._src.haiku.layers import layer_norm as layer_norm
from pax._src.haiku.layers import linear as linear
from pax._src.haiku.layers import max_pool as max_pool
from pax._src.haiku.module import HaikuModule as HaikuModule
from pax._src.haiku.module import from_haiku as from_haiku
from pax._src.haiku.porting import HaikuLoadReport as HaikuLoadReport
from pax._src.haiku.porting import haiku_module_names as haiku_module_names
from pax._src.haiku.porting import load_haiku_params as load_haiku_params
from pax._src.haiku.porting import to_haiku_params as to_haiku_params
from pax._src.haiku.programs import HaikuProgram as HaikuProgram
from pax._src.haiku.programs import from_transformed as from_transformed
from pax._src.haiku.recurrent import gru as gru
from pax._src.haiku.recurrent import lstm as lstm
from pax._src.haiku.to_native import NativeReport as NativeReport
from pax._src.haiku.to_native import to_native as to_native

__all__ = [
    "HaikuConfig",
    "HaikuLoadReport",
    "HaikuModule",
    "HaikuProgram",
    "NativeReport",
    "avg_pool",
    "batch_norm_2d",
    "conv_1d",
    "conv_1d_transpose",
    "conv_2d",
    "conv_2d_transpose",
    "dropout",
    "embed",
    "from_haiku",
    "from_transformed",
    "gru",
    "haiku_module_names",
    "hk_init",
    "layer_norm",
    "linear",
    "load_haiku_params",
    "lstm",
    "max_pool",
    "to_haiku_params",
    "to_native",
]
