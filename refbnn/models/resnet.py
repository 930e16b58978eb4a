"""CIFAR-style ResNets with binary convolutions (channels scaled by ``width``).

ResNet-20 (IR-Net and ReCU official code, "Bi-Real structure"): every binary conv has its own
identity shortcut (the double skip),

    h   = act(BN(conv1(x)) + shortcut(x))
    out = act(BN(conv2(h)) + h)

with the option-A shortcut (subsample, or average pool as in ReCU's code, then zero channel
padding) where the shape changes. Stem: FP conv3x3-16w + BN + act; head: global average pool ->
BatchNorm1d -> FP linear.

ResNet-18 (CIFAR form, IR-Net's code): the standard basic block

    out = act(BN(conv2(act(BN(conv1(x))))) + shortcut(x))

with an FP 1x1 conv + BN shortcut (``shortcut="conv"``, IR-Net) or option A (``"A"``, ReCU's
``resnet2``); stem FP conv3x3-64w + BN (no activation); head as ResNet-20.

Layer names: ``stem.conv``, ``stem.bn`` (``stem.act`` in ResNet-20), the blocks ``stage<s>.block<b>``
(s = 1..3, b = 1..3 in ResNet-20; s = 1..4, b = 1..2 in ResNet-18) with children ``conv1``, ``bn1``,
``act1``, ``conv2``, ``bn2``, ``act2``, ``shortcut`` (a conv shortcut has children ``conv`` and ``bn``),
then ``head.pool``, ``head.bn``, ``head.fc``. The binary layers are ``stage<s>.block<b>.conv1`` and
``.conv2``.
"""
from __future__ import annotations

from .. import ops
from ..layers import GlobalAvgPool, Identity, Module, Sequential, ShortcutA
from .vgg import _image_shape


class BiRealBlock(Module):
    def __init__(self, factory, in_ch, out_ch, stride, shortcut_mode="subsample"):
        super().__init__()
        self.add("conv1", factory.binary_conv(in_ch, out_ch, 3, stride, 1))
        self.add("bn1", factory.batchnorm2d(out_ch))
        self.add("act1", factory.act())
        self.add("conv2", factory.binary_conv(out_ch, out_ch, 3, 1, 1))
        self.add("bn2", factory.batchnorm2d(out_ch))
        self.add("act2", factory.act())
        needs = stride != 1 or in_ch != out_ch
        self.add("shortcut", ShortcutA(in_ch, out_ch, stride, shortcut_mode) if needs else Identity())

    def forward(self, x):
        m, c = self.children, {}
        y, c["conv1"] = m["conv1"].forward(x)
        y, c["bn1"] = m["bn1"].forward(y)
        s, c["shortcut"] = m["shortcut"].forward(x)
        h, c["act1"] = m["act1"].forward(y + s)
        y, c["conv2"] = m["conv2"].forward(h)
        y, c["bn2"] = m["bn2"].forward(y)
        out, c["act2"] = m["act2"].forward(y + h)
        return out, c

    def backward(self, dout, c):
        m = self.children
        d = m["act2"].backward(dout, c["act2"])           # d(y + h)
        dh = d + m["conv2"].backward(m["bn2"].backward(d, c["bn2"]), c["conv2"])
        d = m["act1"].backward(dh, c["act1"])             # d(y + s)
        dx = m["shortcut"].backward(d, c["shortcut"])
        return dx + m["conv1"].backward(m["bn1"].backward(d, c["bn1"]), c["conv1"])


class BasicBlock(Module):
    def __init__(self, factory, in_ch, out_ch, stride, shortcut="conv"):
        super().__init__()
        self.add("conv1", factory.binary_conv(in_ch, out_ch, 3, stride, 1))
        self.add("bn1", factory.batchnorm2d(out_ch))
        self.add("act1", factory.act())
        self.add("conv2", factory.binary_conv(out_ch, out_ch, 3, 1, 1))
        self.add("bn2", factory.batchnorm2d(out_ch))
        self.add("act2", factory.act())
        if stride == 1 and in_ch == out_ch:
            sc = Identity()
        elif shortcut == "conv":
            sc = Sequential(("conv", factory.conv(in_ch, out_ch, 1, stride, 0)), ("bn", factory.batchnorm2d(out_ch)))
        elif shortcut == "A":
            sc = ShortcutA(in_ch, out_ch, stride, "avgpool")
        else:
            raise ValueError(f"shortcut: expected 'conv' or 'A', got {shortcut!r}")
        self.add("shortcut", sc)

    def forward(self, x):
        m, c = self.children, {}
        y, c["conv1"] = m["conv1"].forward(x)
        y, c["bn1"] = m["bn1"].forward(y)
        y, c["act1"] = m["act1"].forward(y)
        y, c["conv2"] = m["conv2"].forward(y)
        y, c["bn2"] = m["bn2"].forward(y)
        s, c["shortcut"] = m["shortcut"].forward(x)
        y, c["add"] = ops.add_forward(y, s)
        out, c["act2"] = m["act2"].forward(y)
        return out, c

    def backward(self, dout, c):
        m = self.children
        d = m["act2"].backward(dout, c["act2"])
        dy, ds = ops.add_backward(d, c["add"])
        for name in ("bn2", "conv2", "act1", "bn1", "conv1"):
            dy = m[name].backward(dy, c[name])
        return dy + m["shortcut"].backward(ds, c["shortcut"])


def _head(factory, channels, num_classes):
    return [("head.pool", GlobalAvgPool()), ("head.bn", factory.batchnorm1d(channels)),
            ("head.fc", factory.linear(channels, num_classes))]


def resnet20(factory, input_shape, num_classes, width=1.0, shortcut_mode="subsample"):
    c_in, h, w = _image_shape(input_shape, "resnet20")
    ch = [max(1, int(round(c * width))) for c in (16, 32, 64)]
    layers = [("stem.conv", factory.conv(c_in, ch[0], 3, 1, 1)), ("stem.bn", factory.batchnorm2d(ch[0])),
              ("stem.act", factory.act())]
    prev = ch[0]
    for stage, c in enumerate(ch):
        for b in range(3):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append((f"stage{stage + 1}.block{b + 1}", BiRealBlock(factory, prev, c, stride, shortcut_mode)))
            prev = c
    return Sequential(*layers, *_head(factory, prev, num_classes))


def resnet18(factory, input_shape, num_classes, width=1.0, shortcut="conv"):
    c_in, h, w = _image_shape(input_shape, "resnet18")
    ch = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    layers = [("stem.conv", factory.conv(c_in, ch[0], 3, 1, 1)), ("stem.bn", factory.batchnorm2d(ch[0]))]
    prev = ch[0]
    for stage, c in enumerate(ch):
        for b in range(2):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append((f"stage{stage + 1}.block{b + 1}", BasicBlock(factory, prev, c, stride, shortcut)))
            prev = c
    return Sequential(*layers, *_head(factory, prev, num_classes))


__all__ = ["BiRealBlock", "BasicBlock", "resnet20", "resnet18"]
