"""DIGITS's model-archive classifier, ported to Python 3 for the tests.

Source: NVIDIA/DIGITS examples/classification/example.py and
use_archive.py (DIGITS 6; BSD-3-Clause, Copyright (c) 2015-2016 NVIDIA
CORPORATION). Kept as close to the original as Python 3 allows, so that a
test proves what DIGITS's own tool does with a downloaded archive:

* ``print`` statements became calls, ``xrange`` became ``range``;
* ``scipy.misc.imresize(image, (h, w), 'bilinear')``, gone from SciPy, is
  PIL's bilinear resize (only called when the size differs);
* ``classify`` returns its classifications instead of only printing them;
* ``unzip_archive`` extracts into a directory the caller names.

Everything else (how the deploy file's input and the mean file are read,
the Transformer set-up with its channel swap for colour images, the mean
pixel, the top-5 rounding to four decimals of a percent) is DIGITS's.
"""
from __future__ import annotations

import os
import tarfile
import zipfile

import numpy as np
import PIL.Image
from google.protobuf import text_format

os.environ.setdefault("GLOG_minloglevel", "2")   # Suppress most caffe output
import caffe  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402


def get_net(caffemodel, deploy_file, use_gpu=True):
    """Returns an instance of caffe.Net."""
    if use_gpu:
        caffe.set_mode_gpu()
    # load a new model
    return caffe.Net(deploy_file, caffemodel, caffe.TEST)


def get_transformer(deploy_file, mean_file=None):
    """Returns an instance of caffe.io.Transformer."""
    network = caffe_pb2.NetParameter()
    with open(deploy_file) as infile:
        text_format.Merge(infile.read(), network)

    if network.input_shape:
        dims = network.input_shape[0].dim
    else:
        dims = network.input_dim[:4]

    t = caffe.io.Transformer(inputs={'data': dims})
    t.set_transpose('data', (2, 0, 1))  # transpose to (channels, height, width)

    # color images
    if dims[1] == 3:
        # channel swap
        t.set_channel_swap('data', (2, 1, 0))

    if mean_file:
        # set mean pixel
        with open(mean_file, 'rb') as infile:
            blob = caffe_pb2.BlobProto()
            blob.MergeFromString(infile.read())
            if blob.HasField('shape'):
                blob_dims = blob.shape
                assert len(blob_dims) == 4, 'Shape should have 4 dimensions - shape is "%s"' % blob.shape
            elif blob.HasField('num') and blob.HasField('channels') and \
                    blob.HasField('height') and blob.HasField('width'):
                blob_dims = (blob.num, blob.channels, blob.height, blob.width)
            else:
                raise ValueError('blob does not provide shape or 4d dimensions')
            pixel = np.reshape(blob.data, blob_dims[1:]).mean(1).mean(1)
            t.set_mean('data', pixel)

    return t


def load_image(path, height, width, mode='RGB'):
    """Load an image from disk: an np.ndarray (height x width [x channels])."""
    image = PIL.Image.open(path)
    image = image.convert(mode)
    # squash (scipy.misc.imresize(image, (height, width), 'bilinear') in DIGITS)
    if image.size != (width, height):
        image = image.resize((width, height), PIL.Image.BILINEAR)
    return np.array(image)


def forward_pass(images, net, transformer, batch_size=1):
    """Returns scores for each image as an np.ndarray (nImages x nClasses)."""
    caffe_images = []
    for image in images:
        if image.ndim == 2:
            caffe_images.append(image[:, :, np.newaxis])
        else:
            caffe_images.append(image)

    caffe_images = np.array(caffe_images)

    dims = transformer.inputs['data'][1:]

    scores = None
    for chunk in [caffe_images[x:x + batch_size] for x in range(0, len(caffe_images), batch_size)]:
        new_shape = (len(chunk),) + tuple(dims)
        if net.blobs['data'].data.shape != new_shape:
            net.blobs['data'].reshape(*new_shape)
        for index, image in enumerate(chunk):
            image_data = transformer.preprocess('data', image)
            net.blobs['data'].data[index] = image_data
        output = net.forward()[net.outputs[-1]]
        if scores is None:
            scores = np.copy(output)
        else:
            scores = np.vstack((scores, output))
    return scores


def read_labels(labels_file):
    """Returns a list of strings."""
    if not labels_file:
        return None
    labels = []
    with open(labels_file) as infile:
        for line in infile:
            label = line.strip()
            if label:
                labels.append(label)
    assert len(labels), 'No labels found'
    return labels


def classify(caffemodel, deploy_file, image_files, mean_file=None, labels_file=None, use_gpu=True):
    """Classify some images against a Caffe model: per image, its top 5
    as (label, confidence in percent rounded to 4 decimals)."""
    net = get_net(caffemodel, deploy_file, use_gpu)
    transformer = get_transformer(deploy_file, mean_file)
    _, channels, height, width = transformer.inputs['data']
    if channels == 3:
        mode = 'RGB'
    elif channels == 1:
        mode = 'L'
    else:
        raise ValueError('Invalid number for channels: %s' % channels)
    images = [load_image(image_file, height, width, mode) for image_file in image_files]
    labels = read_labels(labels_file)

    scores = forward_pass(images, net, transformer)

    indices = (-scores).argsort()[:, :5]  # take top 5 results
    classifications = []
    for image_index, index_list in enumerate(indices):
        result = []
        for i in index_list:
            # 'i' is a category in labels and also an index into scores
            if labels is None:
                label = 'Class #%s' % i
            else:
                label = labels[i]
            result.append((label, round(100.0 * scores[image_index, i], 4)))
        classifications.append(result)
    return classifications


def unzip_archive(archive, tmpdir):
    """Extract a model archive (tar or zip) into ``tmpdir``."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(path=tmpdir)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(path=tmpdir)
    else:
        raise ValueError('Unknown file type for %s' % os.path.basename(archive))
    return tmpdir


def classify_with_archive(archive, tmpdir, image_files, use_gpu=True):
    """use_archive.py: find the files by name in the extracted archive."""
    unzip_archive(archive, tmpdir)
    caffemodel = deploy_file = mean_file = labels_file = None
    unknown = []
    for filename in os.listdir(tmpdir):
        full_path = os.path.join(tmpdir, filename)
        if filename.endswith('.caffemodel'):
            caffemodel = full_path
        elif filename == 'deploy.prototxt':
            deploy_file = full_path
        elif filename.endswith('.binaryproto'):
            mean_file = full_path
        elif filename == 'labels.txt':
            labels_file = full_path
        else:
            unknown.append(filename)

    assert caffemodel is not None, 'Caffe model file not found'
    assert deploy_file is not None, 'Deploy file not found'

    return classify(caffemodel, deploy_file, image_files, mean_file=mean_file, labels_file=labels_file,
                    use_gpu=use_gpu)
