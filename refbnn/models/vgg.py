"""VGG-Small (the IR-Net / ReCU CIFAR model, channels scaled by ``width``).

FP conv0 (3x3, 128w) -> BN -> act, then binary convs 128w-128w, 128w-256w, 256w-256w, 256w-512w,
512w-512w, with a 2x2 max pool after the 1st, 3rd and 5th binary conv (conv -> pool -> BN -> act,
the official order), then an FP linear layer. Inputs need H and W divisible by 8.

Layer names: ``stem.conv``, ``stem.bn``, ``stem.act``, then for i = 1..5 ``conv<i>``, ``pool<i>`` (i = 1,
3, 5), ``bn<i>``, ``act<i>``, then ``flatten``, ``classifier``; the binary layers are ``conv1`` .. ``conv5``.
"""
from __future__ import annotations

from ..layers import Flatten, MaxPool2d, Sequential


def vgg_small(factory, input_shape, num_classes, width=1.0):
    c_in, h, w = _image_shape(input_shape, "vgg_small")
    if h % 8 or w % 8:
        raise ValueError(f"vgg_small: expected input height and width divisible by 8, got {h}x{w}")
    ch = [max(1, int(round(c * width))) for c in (128, 128, 256, 256, 512, 512)]
    layers = [("stem.conv", factory.conv(c_in, ch[0], 3, 1, 1)), ("stem.bn", factory.batchnorm2d(ch[0])),
              ("stem.act", factory.act())]
    for i in range(1, 6):
        layers.append((f"conv{i}", factory.binary_conv(ch[i - 1], ch[i], 3, 1, 1)))
        if i in (1, 3, 5):
            layers.append((f"pool{i}", MaxPool2d(2)))
        layers += [(f"bn{i}", factory.batchnorm2d(ch[i])), (f"act{i}", factory.act())]
    layers += [("flatten", Flatten()), ("classifier", factory.linear(ch[5] * (h // 8) * (w // 8), num_classes))]
    return Sequential(*layers)


def _image_shape(input_shape, model):
    if len(input_shape) != 3:
        raise ValueError(f"{model}: expected image inputs (C, H, W), got input shape {input_shape}; "
                         "use --model mlp for flat data")
    return input_shape
