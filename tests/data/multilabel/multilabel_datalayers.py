# The pattern of BVLC/caffe examples/pycaffe/layers/pascal_multilabel_datalayers.py
# (BSD 2-Clause licence, The Regents of the University of California and
# contributors): a synchronous multilabel data layer with a batch loader and
# the SimpleTransformer of the helper module `tools`. PASCAL VOC is replaced
# by a synthetic source: images whose colour channels say which labels are on.
import ast

import caffe
import numpy as np

from tools import SimpleTransformer


class MultilabelDataLayerSync(caffe.Layer):
    """Loads (image, multi-hot label) batches synchronously."""

    def setup(self, bottom, top):
        self.top_names = ['data', 'label']
        params = ast.literal_eval(self.param_str)
        check_params(params)
        self.batch_size = params['batch_size']
        self.batch_loader = BatchLoader(params, None)
        top[0].reshape(self.batch_size, 3, params['im_shape'][0], params['im_shape'][1])
        top[1].reshape(self.batch_size, params['num_labels'])

    def forward(self, bottom, top):
        for itt in range(self.batch_size):
            im, multilabel = self.batch_loader.load_next_image()
            top[0].data[itt, ...] = im
            top[1].data[itt, ...] = multilabel

    def reshape(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class BatchLoader:
    """Synthetic images: label k is on when channel k % 3 of quadrant k is bright."""

    def __init__(self, params, result):
        self.im_shape = params['im_shape']
        self.num_labels = params['num_labels']
        self.rng = np.random.default_rng(params.get('seed', 0) + (params['split'] == 'val'))
        self.transformer = SimpleTransformer()

    def load_next_image(self):
        labels = self.rng.integers(0, 2, self.num_labels).astype(np.float32)
        h, w = self.im_shape
        im = self.rng.integers(0, 60, (h, w, 3)).astype(np.float32)
        for k in np.flatnonzero(labels):
            rows = slice(0, h // 2) if k % 2 == 0 else slice(h // 2, h)
            im[rows, :, k % 3] += 150
        return self.transformer.preprocess(im), labels


def check_params(params):
    required = ['batch_size', 'split', 'im_shape', 'num_labels']
    for r in required:
        assert r in params.keys(), 'Params must include {}'.format(r)
