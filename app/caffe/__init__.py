"""Caffe's formats without libcaffe: prototxt/protobuf (network, solver, pictures), glog parsing, LMDB datasets."""
