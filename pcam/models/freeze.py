"""Which parts of a model train: the backbone's blocks (``--unfreeze N``); BatchNorm frozen."""
from __future__ import annotations

import keras
import numpy as np

from pcam.errors import PcamError


def backbone_blocks(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped into blocks, bottom to top: the unit of ``--unfreeze``.

    A block is one of the blocks Keras names in its applications: a residual
    block ``convS_blockB`` (ResNet50, ResNet50V2: 16), a dense block layer
    ``convS_blockB`` (DenseNet121: 58), an MBConv block ``blockSx``
    (EfficientNetV2B0: 21, EfficientNetV2S: 40), a CoAtNet MBConv or
    transformer block ``blockSx`` (CoAtNet-0: 12), a ConvNeXt block
    ``convnext_tiny_stage_S_block_B`` (ConvNeXtTiny: 18, each stage's
    downsampling in its first block) or ``blockB`` (simple-cnn: 4, cpu-cnn: 7). Layers
    outside the named blocks join the block below them (a DenseNet
    transition, a final BatchNorm or LayerNorm, EfficientNet's top conv), and
    layers below the first block form one more block, the stem (ResNet50's
    conv1 + pool1). So ResNet50 has 17 blocks, ResNet50V2 17, DenseNet121 59,
    EfficientNetV2B0 22, EfficientNetV2S 41, ConvNeXtTiny 19, CoAtNet-0 13,
    simple-cnn 4, cpu-cnn 7.
    """
    blocks: list[list[keras.layers.Layer]] = [[]]  # the stem
    current = None
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        key = _block_key(layer.name)
        if key is not None and key != current:
            blocks.append([])
            current = key
        blocks[-1].append(layer)
    return [block for block in blocks if block]


def _block_key(layer_name: str) -> str | None:
    """'conv5_block3_2_conv' -> 'conv5_block3', 'block6h_add' -> 'block6h', 'pool4_conv' -> None.

    ConvNeXt: 'convnext_tiny_stage_2_block_4_gelu' -> 'convnext_tiny_stage_2_block_4';
    the downsampling from stage i to i + 1, 'convnext_tiny_downsampling_block_i',
    opens stage i + 1's first block (as the strided convolution of ResNet's convS_block1
    and EfficientNet's blockSa belongs to that block).
    """
    parts = layer_name.split("_")
    if parts[0].startswith("block"):
        return parts[0]
    if len(parts) > 1 and parts[1].startswith("block"):
        return "_".join(parts[:2])
    if "stage" in parts[:-3] and parts[-1] != "block":
        i = parts.index("stage")
        if parts[i + 2] == "block":
            return "_".join(parts[:i + 4])
    if len(parts) > 2 and parts[-3] == "downsampling" and parts[-2] == "block" \
            and parts[-1].isdigit():
        return "_".join(parts[:-3] + ["stage", str(int(parts[-1]) + 1), "block", "0"])
    return None


def set_backbone_trainable(model: keras.Model, trainable: bool | int, *,
                           freeze_batchnorm: bool = True) -> None:
    """Freeze or unfreeze the backbone; recompile the model afterwards.

    Args:
        model: a model from ``create_model``.
        trainable: False (or 0) freezes the whole backbone (phase 1); True
            unfreezes all of it; an int N unfreezes the top N blocks as
            ``backbone_blocks`` defines them (N = all blocks is the same as True).
        freeze_batchnorm: keep the backbone's BatchNormalization layers frozen
            (the default, for fine-tuning pretrained weights). Pass False when
            the backbone starts from random weights (``simple-cnn``, ``--weights
            none``): there are no pretrained statistics to keep, and BatchNorm
            must learn its own.

    Why BatchNormalization stays frozen when fine-tuning: in Keras 3 a
    BatchNormalization layer with ``trainable = False`` runs in inference
    mode, normalizing with its stored moving statistics and not updating them.
    The pretrained weights expect the ImageNet statistics; re-estimating them
    from small fine-tuning batches (32-128 tiles of stained tissue, against the
    1.3M photographs they came from) would shift every activation downstream
    and wreck what phase 1 learnt (Keras' transfer-learning guide). The head's
    BatchNormalization is not part of the backbone and stays trainable.
    """
    backbone = model.get_layer("backbone")
    blocks = backbone_blocks(backbone)
    if isinstance(trainable, bool):
        top = len(blocks) if trainable else 0
    else:
        top = int(trainable)
        if not 0 <= top <= len(blocks):
            raise PcamError(f"cannot unfreeze {top} blocks: the backbone has {len(blocks)} "
                            f"blocks (0 to {len(blocks)}, or all)")
    backbone.trainable = top > 0
    # Every layer is set explicitly: the model's recursive `trainable` setter
    # does not undo an earlier call (in Keras 3.15, True on a model that is
    # already True leaves the layers inside it as they were).
    first_trainable = len(blocks) - top
    for i, block in enumerate(blocks):
        for layer in block:
            is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = i >= first_trainable and not (freeze_batchnorm and is_batchnorm)


def count_trainable_weights(model: keras.Model) -> int:
    """Number of trainable scalars (parameters) in ``model``."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
