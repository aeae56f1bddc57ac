"""Neural network layers, in pure JAX."""

from pax._src.nn.attention import MultiHeadAttention as MultiHeadAttention
from pax._src.nn.batch_norm import BatchNorm as BatchNorm
from pax._src.nn.batch_norm import BatchNorm1D as BatchNorm1D
from pax._src.nn.batch_norm import BatchNorm2D as BatchNorm2D
from pax._src.nn.conv import Conv1D as Conv1D
from pax._src.nn.conv import Conv2D as Conv2D
from pax._src.nn.conv import Conv3D as Conv3D
from pax._src.nn.conv_transpose import Conv1DTranspose as Conv1DTranspose
from pax._src.nn.conv_transpose import Conv2DTranspose as Conv2DTranspose
from pax._src.nn.conv_transpose import Conv3DTranspose as Conv3DTranspose
from pax._src.nn.dropout import Dropout as Dropout
from pax._src.nn.ema import EMA as EMA
from pax._src.nn.embed import Embed as Embed
from pax._src.nn.kv_cache import KVCache as KVCache
from pax._src.nn.kv_cache import init_cache as init_cache
from pax._src.nn.linear import Identity as Identity
from pax._src.nn.linear import Lambda as Lambda
from pax._src.nn.linear import Linear as Linear
from pax._src.nn.norm import GroupNorm as GroupNorm
from pax._src.nn.norm import LayerNorm as LayerNorm
from pax._src.nn.norm import RMSNorm as RMSNorm
from pax._src.nn.pool import AvgPool as AvgPool
from pax._src.nn.pool import MaxPool as MaxPool
from pax._src.nn.pool import avg_pool as avg_pool
from pax._src.nn.pool import max_pool as max_pool
from pax._src.nn.recurrent import GRU as GRU
from pax._src.nn.recurrent import LSTM as LSTM
from pax._src.nn.recurrent import DeepRNN as DeepRNN
from pax._src.nn.recurrent import LSTMState as LSTMState
from pax._src.nn.recurrent import VanillaRNN as VanillaRNN
from pax._src.nn.reshape import Flatten as Flatten
from pax._src.nn.reshape import Reshape as Reshape
from pax._src.nn.rotary import RotaryEmbedding as RotaryEmbedding
from pax._src.nn.sequential import MLP as MLP
from pax._src.nn.sequential import Sequential as Sequential
from pax._src.nn.stack import Stack as Stack
from pax._src.nn.unroll import dynamic_unroll as dynamic_unroll

__all__ = [
    "EMA",
    "GRU",
    "LSTM",
    "MLP",
    "AvgPool",
    "BatchNorm",
    "BatchNorm1D",
    "BatchNorm2D",
    "Conv1D",
    "Conv1DTranspose",
    "Conv2D",
    "Conv2DTranspose",
    "Conv3D",
    "Conv3DTranspose",
    "DeepRNN",
    "Dropout",
    "Embed",
    "Flatten",
    "GroupNorm",
    "Identity",
    "KVCache",
    "LSTMState",
    "Lambda",
    "LayerNorm",
    "Linear",
    "MaxPool",
    "MultiHeadAttention",
    "RMSNorm",
    "Reshape",
    "RotaryEmbedding",
    "Sequential",
    "Stack",
    "VanillaRNN",
    "avg_pool",
    "dynamic_unroll",
    "init_cache",
    "max_pool",
]
