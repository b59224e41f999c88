"""A Dice coefficient metric layer: our own copy of the logic of DIGITS's
``examples/medical-imaging/dice.py`` (NVIDIA/DIGITS, BSD 3-Clause licence,
Copyright (c) NVIDIA CORPORATION): per image, the argmax of the score map is
the predicted mask; Dice = 2 |P ∩ L| / (|P| + |L|); the top is the batch mean.
No backward: it is a metric, not a loss."""
import caffe
import numpy as np


class Dice(caffe.Layer):
    """bottom[0]: scores N x C x H x W, bottom[1]: labels N x 1 x H x W."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Dice needs two bottoms: the scores and the label")

    def reshape(self, bottom, top):
        if bottom[0].num != bottom[1].num or bottom[0].data.shape[2:] != bottom[1].data.shape[2:]:
            raise Exception("the score map and the label differ in size")
        top[0].reshape(1)

    def forward(self, bottom, top):
        dice = np.zeros(bottom[0].num)
        for i in range(bottom[0].num):
            prediction = np.argmax(bottom[0].data[i], axis=0) > 0
            label = bottom[1].data[i][0] > 0
            a_p, a_l = prediction.sum(), label.sum()
            dice[i] = 1.0 if a_p + a_l == 0 else 2.0 * np.logical_and(prediction, label).sum() / (a_p + a_l)
        top[0].data[0] = dice.mean()

    def backward(self, top, propagate_down, bottom):
        pass
