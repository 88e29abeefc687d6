"""CoAtNet (Dai et al. 2021, "CoAtNet: Marrying Convolution and Attention for All Data Sizes").

Written here because no maintained package provides it under Keras 3:
keras-cv-attention-models needs legacy Keras (and switches the whole process
to it on import), keras-hub and keras-cv have none. Keras 3 layers and
``keras.ops`` only, so any backend runs it; the one custom layer,
``RelativeAttention2D``, is registered as serializable, so a ``.keras`` file
loads in a process that has imported pcam.

CoAtNet-0 (the defaults), stages C-C-T-T, S = input side::

    S0 stem       2 x conv 3x3 (first stride 2)          64 ch   S/2
    S1 MBConv     2 blocks, first stride 2                96 ch   S/4
    S2 MBConv     3 blocks, first stride 2               192 ch   S/8
    S3 attention  5 blocks, first downsamples            384 ch   S/16
    S4 attention  2 blocks, first downsamples            768 ch   S/32
    top_norm      LayerNormalization: the output, (S/32, S/32, 768)

MBConv (pre-norm): ``x <- Proj(Pool(x)) + Conv1x1(SE(DWConv3x3(Conv1x1(BN(x)))))``,
expansion 4 (of the block's input channels), squeeze-excitation to 0.25 of
the input channels, GELU, the stride on the depthwise convolution.
Transformer block: ``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))`` then
``x <- x + MLP(LN(x))`` (ratio 4, GELU). Attention is over the whole feature
map (the paper's CoAtNet-0 uses no windows) with a learned relative position
bias per head, head dimension 32. Pool is a 2x2 max-pool with stride 2, and
Proj a 1x1 convolution, in the first block of every stage. Stochastic depth
is left out (the paper's 0.2 is for ImageNet's 300 epochs).

The bias table has (2H-1)(2W-1) entries per head for an H x W map, so a model
is built for one input size: the sizes are fixed when it is built (pcam builds
the backbone at ``image_size``). The five halvings need a side divisible by 32.

Layers are named ``stem_*``, ``blockSB_*`` (S the stage 1-4, B a letter per
block: ``block1a_``, ``block3e_``), ``top_norm``, as in Keras' EfficientNets,
so that ``pcam.models.freeze.backbone_blocks`` groups them per block (stem + 12).

A narrow CoAtNet for tests: ``coatnet(input_shape=(32, 32, 3), blocks=(1, 1, 1,
1, 1), channels=(8, 8, 16, 16, 32))`` (head dimension 32 on 16 channels gives
one head of 16); register it as a backbone with
``pcam.models.registry.register_backbone(pcam.models.registry.coatnet_backbone("coatnet-narrow",
blocks=..., channels=...))``.
"""
from __future__ import annotations

import string

import keras
import numpy as np

COATNET0_BLOCKS = (2, 2, 3, 5, 2)
COATNET0_CHANNELS = (64, 96, 192, 384, 768)
# The five stages halve the side five times (stem, S1..S4).
SIZE_MULTIPLE = 32
BN_EPSILON = 1e-5  # as timm's CoAtNet, whose ImageNet recipe the paper's follows
LN_EPSILON = 1e-5


def relative_position_index(height: int, width: int) -> np.ndarray:
    """(H*W, H*W) int32: for query i and key j, the row of the bias table
    holding their offset (dy, dx), dy in -(H-1)..H-1 and dx in -(W-1)..W-1,
    numbered ``(dy + H - 1) * (2W - 1) + (dx + W - 1)``."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()], axis=-1)  # (N, 2)
    offset = coords[:, None, :] - coords[None, :, :] + np.array([height - 1, width - 1])
    return (offset[..., 0] * (2 * width - 1) + offset[..., 1]).astype("int32")


@keras.saving.register_keras_serializable(package="pcam")
class RelativeAttention2D(keras.layers.Layer):
    """Multi-head self-attention over every position of a feature map, with a
    learned relative position bias (CoAtNet's "relative attention").

    ``softmax(q k^T / sqrt(d) + B[i - j]) v`` where B is a table of
    (2H-1)(2W-1) scalars per head, indexed by the offset between query and key
    positions: translation-equivariant like a convolution, global like
    attention. The table's size follows the map's size, so the layer is built
    for one H x W.

    Input (B, H, W, C); output (B, H, W, ``units``). Query, key and value
    are projections of C to ``units`` channels, split into ``num_heads`` heads;
    the heads are concatenated and projected to ``units``.

    Args:
        units: output channels (and those of query, key and value).
        num_heads: number of heads; ``units`` must be a multiple of it.
    """

    def __init__(self, units: int, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        if units % num_heads:
            raise ValueError(f"{units} channels do not split into {num_heads} heads")
        self.units = int(units)
        self.num_heads = int(num_heads)

    def build(self, input_shape):
        _, height, width, channels = input_shape
        if height is None or width is None:
            raise ValueError("RelativeAttention2D needs a fixed feature map size: its bias "
                             "table has one entry per offset")
        self.height, self.width = int(height), int(width)
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.qkv_kernel = self.add_weight((channels, 3 * self.units), init, name="qkv_kernel")
        self.qkv_bias = self.add_weight((3 * self.units,), "zeros", name="qkv_bias")
        self.proj_kernel = self.add_weight((self.units, self.units), init, name="proj_kernel")
        self.proj_bias = self.add_weight((self.units,), "zeros", name="proj_bias")
        self.bias_table = self.add_weight(
            ((2 * self.height - 1) * (2 * self.width - 1), self.num_heads), init,
            name="relative_position_bias")
        # A constant, not a weight: it follows from the size, and the file stays
        # the same for any index scheme.
        self.index = relative_position_index(self.height, self.width)

    def call(self, x):
        ops = keras.ops
        n = self.height * self.width
        head_dim = self.units // self.num_heads
        x = ops.reshape(x, (-1, n, ops.shape(x)[-1]))
        qkv = ops.matmul(x, self.qkv_kernel) + self.qkv_bias  # (B, N, 3 * units)
        qkv = ops.reshape(qkv, (-1, n, 3, self.num_heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (head_dim ** -0.5)
        bias = ops.take(self.bias_table, ops.convert_to_tensor(self.index), axis=0)  # (N, N, h)
        logits = logits + ops.cast(ops.transpose(bias, (2, 0, 1)), logits.dtype)[None]
        # The softmax in float32: under mixed precision float16 logits lose
        # the small differences that the bias is made of. Written out because
        # keras.ops.softmax warns on a 1x1 map (one key: weights all 1), which
        # is S4 at 32 px, the smallest size.
        logits = ops.cast(logits, "float32")
        weights = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
        weights = ops.cast(weights / ops.sum(weights, axis=-1, keepdims=True), v.dtype)
        out = ops.matmul(weights, v)  # (B, heads, N, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, n, self.units))
        out = ops.matmul(out, self.proj_kernel) + self.proj_bias
        return ops.reshape(out, (-1, self.height, self.width, self.units))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_heads": self.num_heads}


def _mbconv(x, channels: int, strides: int, expansion: int, se_ratio: float, name: str):
    """One pre-norm MBConv block; ``strides`` 2 halves the map (pooled, projected shortcut)."""
    layers = keras.layers
    in_channels = x.shape[-1]
    shortcut = x
    if strides > 1:
        shortcut = layers.MaxPooling2D(2, strides, padding="same", name=name + "shortcut_pool")(x)
    if strides > 1 or in_channels != channels:
        shortcut = layers.Conv2D(channels, 1, name=name + "shortcut_proj")(shortcut)
    y = layers.BatchNormalization(epsilon=BN_EPSILON, name=name + "preact_bn")(x)
    y = layers.Conv2D(in_channels * expansion, 1, use_bias=False, name=name + "expand_conv")(y)
    y = layers.BatchNormalization(epsilon=BN_EPSILON, name=name + "expand_bn")(y)
    y = layers.Activation("gelu", name=name + "expand_gelu")(y)
    y = layers.DepthwiseConv2D(3, strides, padding="same", use_bias=False,
                               name=name + "dwconv")(y)
    y = layers.BatchNormalization(epsilon=BN_EPSILON, name=name + "dw_bn")(y)
    y = layers.Activation("gelu", name=name + "dw_gelu")(y)
    if se_ratio:
        s = layers.GlobalAveragePooling2D(keepdims=True, name=name + "se_pool")(y)
        s = layers.Conv2D(max(1, int(in_channels * se_ratio)), 1, name=name + "se_reduce")(s)
        s = layers.Activation("gelu", name=name + "se_gelu")(s)
        s = layers.Conv2D(y.shape[-1], 1, activation="sigmoid", name=name + "se_expand")(s)
        y = layers.Multiply(name=name + "se_scale")([y, s])
    y = layers.Conv2D(channels, 1, name=name + "project_conv")(y)
    return layers.Add(name=name + "add")([shortcut, y])


def _transformer(x, channels: int, downsample: bool, head_dim: int, mlp_ratio: int, name: str):
    """One pre-norm transformer block (attention, then MLP), each with a residual."""
    layers = keras.layers
    shortcut = x
    y = layers.LayerNormalization(epsilon=LN_EPSILON, name=name + "attn_norm")(x)
    if downsample:
        shortcut = layers.MaxPooling2D(2, 2, padding="same", name=name + "shortcut_pool")(x)
        y = layers.MaxPooling2D(2, 2, padding="same", name=name + "attn_pool")(y)
    if downsample or x.shape[-1] != channels:
        shortcut = layers.Conv2D(channels, 1, name=name + "shortcut_proj")(shortcut)
    heads = max(1, channels // head_dim)
    y = RelativeAttention2D(channels, heads, name=name + "attn")(y)
    x = layers.Add(name=name + "attn_add")([shortcut, y])
    y = layers.LayerNormalization(epsilon=LN_EPSILON, name=name + "mlp_norm")(x)
    y = layers.Dense(channels * mlp_ratio, name=name + "mlp_dense1")(y)
    y = layers.Activation("gelu", name=name + "mlp_gelu")(y)
    y = layers.Dense(channels, name=name + "mlp_dense2")(y)
    return layers.Add(name=name + "add")([x, y])


def coatnet(include_top=False, weights=None, input_shape=(224, 224, 3), *,
            blocks=COATNET0_BLOCKS, channels=COATNET0_CHANNELS, head_dim: int = 32,
            expansion: int = 4, se_ratio: float = 0.25, mlp_ratio: int = 4,
            name: str = "coatnet"):
    """A CoAtNet feature extractor, CoAtNet-0 by default; same signature as the
    ``keras.applications`` constructors.

    Args:
        include_top: must be False (pcam's head is added by ``create_model``).
        weights: must be None: Keras has no pretrained CoAtNet weights.
        input_shape: (S, S, 3) with S a multiple of 32 (S/32 x S/32 at the end).
        blocks: five counts: stem convolutions, then blocks of S1 to S4.
        channels: five widths: stem, S1 to S4.
        head_dim: channels per attention head (heads = channels // head_dim,
            at least 1).
        expansion: MBConv's hidden width over its input width.
        se_ratio: squeeze-excitation width over the MBConv input width (0: none).
        mlp_ratio: the transformer MLP's hidden width over its width.
        name: the model's name.

    Returns:
        A functional ``keras.Model``: (B, S, S, 3) -> (B, S/32, S/32, channels[4]).
        Its input is standardized RGB (pcam's ``ChannelStandardize`` in front).

    Raises:
        ValueError: a top or weights asked for, a side not a multiple of 32, or
            block and channel lists that are not five positive numbers.
    """
    if include_top or weights is not None:
        raise ValueError("coatnet has no top and no pretrained weights in Keras")
    side = input_shape[0]
    if side is None or side != input_shape[1] or side % SIZE_MULTIPLE:
        raise ValueError(f"coatnet needs a square input whose side is a multiple of "
                         f"{SIZE_MULTIPLE}, got {tuple(input_shape)}")
    if len(blocks) != 5 or len(channels) != 5 or min(blocks) < 1 or min(channels) < 1:
        raise ValueError(f"coatnet needs five block counts and five widths, all positive; "
                         f"got blocks={blocks}, channels={channels}")
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = inputs
    for i in range(blocks[0]):
        x = layers.Conv2D(channels[0], 3, 2 if i == 0 else 1, padding="same", use_bias=False,
                          name=f"stem_conv{i + 1}")(x)
        if i < blocks[0] - 1:
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"stem_bn{i + 1}")(x)
            x = layers.Activation("gelu", name=f"stem_gelu{i + 1}")(x)
    for stage in (1, 2, 3, 4):
        for b in range(blocks[stage]):
            prefix = f"block{stage}{string.ascii_lowercase[b]}_"
            if stage <= 2:
                x = _mbconv(x, channels[stage], 2 if b == 0 else 1, expansion, se_ratio, prefix)
            else:
                x = _transformer(x, channels[stage], b == 0, head_dim, mlp_ratio, prefix)
    # Pre-norm blocks leave the residual stream unnormalized: a last norm
    # before the head, as in ViT. Grad-CAM reads this map (see pcam.models.registry).
    x = layers.LayerNormalization(epsilon=LN_EPSILON, name="top_norm")(x)
    return keras.Model(inputs, x, name=name)
