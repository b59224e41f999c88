# Adapted from BVLC/caffe examples/pycaffe/tools.py (BSD 2-Clause licence,
# Copyright (c) 2014-2017 The Regents of the University of California and
# contributors): SimpleTransformer as Caffe's multilabel example imports it.
import numpy as np


class SimpleTransformer:
    """Preprocess images for Caffe: RGB->BGR, subtract the mean, scale, HWC->CHW."""

    def __init__(self, mean=(128, 128, 128)):
        self.mean = np.array(mean, dtype=np.float32)
        self.scale = 1.0

    def set_mean(self, mean):
        self.mean = mean

    def set_scale(self, scale):
        self.scale = scale

    def preprocess(self, im):
        im = np.float32(im)
        im = im[:, :, ::-1]  # change to BGR
        im -= self.mean
        im *= self.scale
        return im.transpose((2, 0, 1))

    def deprocess(self, im):
        im = im.transpose(1, 2, 0)
        im /= self.scale
        im += self.mean
        return np.uint8(im[:, :, ::-1])
