"""Python layers for the gradient check's tests (tests/test_gradcheck.py):
correct ones, subtly wrong ones, a kinked one, one with a parameter blob and
one without a backward.

EuclideanLossLayer is a copy of Caffe's examples/pycaffe/layers/pyloss.py
(BVLC/caffe, BSD 2-Clause licence, (c) the Regents of the University of
California and the Caffe contributors); the others are written for these tests.
"""
import caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    """Caffe's pyloss.py, as Caffe ships it."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            if i == 0:
                sign = 1
            else:
                sign = -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class FlippedEuclideanLoss(EuclideanLossLayer):
    """Wrong: the sign of the gradient is flipped."""

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                bottom[i].diff[...] = (-1 if i == 0 else 1) * self.diff / bottom[i].num


class SquaredLossNoHalf(EuclideanLossLayer):
    """Wrong: the loss lost its 1/2, the backward kept it (a factor 2 missing)."""

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num


class ScaleLayer(caffe.Layer):
    """top = bottom * w (one learnable weight per channel): a parameter blob."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].data.shape[1])
        self.blobs[0].data[...] = np.linspace(0.5, 1.5, bottom[0].data.shape[1])

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[None, :]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[None, :]


class CenterRows(caffe.Layer):
    """top = bottom minus each row's mean: correct."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data[...] = x - x.mean(axis=1, keepdims=True)

    def backward(self, top, propagate_down, bottom):
        g = top[0].diff
        bottom[0].diff[...] = g - g.mean(axis=1, keepdims=True)


class ShiftByLabel(caffe.Layer):
    """top = bottom[0] + label / 100: no gradient for the labels."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + bottom[1].data[:, None] / 100

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


class CenterRowsWrongAxis(CenterRows):
    """Wrong: the backward takes the mean over the batch axis."""

    def backward(self, top, propagate_down, bottom):
        g = top[0].diff
        bottom[0].diff[...] = g - g.mean(axis=0, keepdims=True)


class PyReLU(caffe.Layer):
    """max(x, 0), kinked at 0: its bottom (after Caffe's ReLU) sits on the kink."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = np.maximum(bottom[0].data, 0)

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff * (bottom[0].data > 0)


class Double(caffe.Layer):
    """top = 2 * bottom, and no backward at all."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass


class AccumulatingDouble(Double):
    """Wrong in Caffe: adds to the bottom's diff, which Caffe never zeroes."""

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] += 2 * top[0].diff


class BlankSquare(caffe.Layer):
    """An image layer (occlusion): a blank square in the middle of each image."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        h, w = bottom[0].data.shape[2:]
        top[0].data[:, :, h // 4:h // 2, w // 4:w // 2] = 0

    def backward(self, top, propagate_down, bottom):
        pass
