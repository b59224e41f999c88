"""Network prototxt handling with caffe_pb2 + protobuf text_format (never regex).

DIGITS all-in-one networks carry every stage in one file: layers are picked
for the ``train`` / ``val`` / ``deploy`` nets by Caffe's NetStateRule
(include/exclude, phase, stage, not_stage, min/max level). This module parses,
checks (Python module name, unproduced blobs, paths, blob sizes), fills data
layers from a dataset and emits train_val / deploy prototxts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message

from app.caffe import digits_net
from app.caffe.digits_net import DEPLOY_INPUT
from app.caffe.proto import caffe_pb2

LAYER_MODULE = "digits_python_layers"
# Data layers the dataset can feed; the deploy net replaces them by Input.
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "DummyData", "Input"}
# The validator logs this before it builds each stage's net, so that a Caffe
# abort (no report) can be told apart: train, val or deploy.
BUILDING = "layerbench: building the {stage} net"
MAX_BLOB_ELEMENTS = 1 << 28   # 1 GiB of float32: refuse before Caffe allocates


class NetworkError(Exception):
    """Invalid network; ``details`` are API error-shape detail dicts."""

    def __init__(self, message: str, details: list[dict]) -> None:
        super().__init__(message)
        self.message, self.details = message, details


@dataclass
class Network:
    """A parsed network and where each layer stands in the uploaded text."""

    net: Message
    filename: str
    layer_lines: list[int | None] = field(default_factory=list)

    def line_of(self, layer_name: str) -> int | None:
        """Line of the first layer named ``layer_name`` in the upload."""
        for layer, line in zip(self.net.layer, self.layer_lines):
            if layer.name == layer_name:
                return line
        return None

    def detail(self, message: str, layer: str | None = None, stage: str = "parse",
               field_name: str = "network") -> dict:
        """An error-shape detail pointing into this network file."""
        return {"field": field_name, "file": self.filename, "line": self.line_of(layer) if layer else None,
                "layer": layer, "stage": stage, "message": message}


def parse(text: str, filename: str = "network.prototxt") -> Network:
    """Parse prototxt text into a Network; raise NetworkError with the line."""
    pb = caffe_pb2()
    net = pb.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        raise NetworkError("The network prototxt could not be parsed.",
                           [{"field": "network", "file": filename, "line": line, "layer": None,
                             "column": exc.GetColumn() if hasattr(exc, "GetColumn") else None,
                             "stage": "parse", "message": str(exc)}]) from None
    if net.layers:
        raise NetworkError("V1 'layers' definitions are not supported; use 'layer'.",
                           [{"field": "network", "file": filename, "line": None, "layer": None,
                             "stage": "parse", "message": "upgrade the net with Caffe's upgrade_net_proto_text"}])
    if not net.layer:
        raise NetworkError("The network has no layers.",
                           [{"field": "network", "file": filename, "line": None, "layer": None,
                             "stage": "parse", "message": "no 'layer { ... }' found"}])
    return Network(net, filename, _layer_lines(text))


def _layer_lines(text: str) -> list[int]:
    # protobuf's own tokenizer (not a regex): the line of each top-level
    # `layer` field, in order, so errors can point at the upload.
    tok = text_format.Tokenizer(text.splitlines())
    lines, depth = [], 0
    while not tok.AtEnd():
        token, line = tok.token, tok._line + 1
        if token in ("{", "<"):
            depth += 1
        elif token in ("}", ">"):
            depth -= 1
        elif depth == 0 and token == "layer":
            lines.append(line)
        tok.NextToken()
    return lines


def state(stage: str) -> Message:
    """The NetState DIGITS uses for a stage: train=TRAIN, val/deploy=TEST."""
    pb = caffe_pb2()
    return pb.NetState(phase=pb.TRAIN if stage == "train" else pb.TEST, stage=[stage])


def _meets(st: Message, rule: Message) -> bool:
    # Mirrors caffe::Net::StateMeetsRule (net.cpp).
    if rule.HasField("phase") and rule.phase != st.phase:
        return False
    if rule.HasField("min_level") and st.level < rule.min_level:
        return False
    if rule.HasField("max_level") and st.level > rule.max_level:
        return False
    if any(s not in st.stage for s in rule.stage):
        return False
    return not any(s in st.stage for s in rule.not_stage)


def included(layer: Message, st: Message) -> bool:
    """caffe::Net::FilterNet's decision for one layer."""
    keep = len(layer.include) == 0
    for rule in layer.exclude:
        if _meets(st, rule):
            keep = False
    for rule in layer.include:
        if _meets(st, rule):
            keep = True
    return keep


def filtered(net: Message, stage: str) -> list[Message]:
    """The layers of ``net`` that the ``stage`` net contains."""
    st = state(stage)
    return [layer for layer in net.layer if included(layer, st)]


def layer_stages(layer: Message) -> list[str]:
    """Which of train/val/deploy nets contain ``layer``."""
    return [s for s in ("train", "val", "deploy") if included(layer, state(s))]


def check(network: Network) -> None:
    """Static checks: Python module names, unproduced blobs. Raises NetworkError."""
    details = []
    for layer in network.net.layer:
        if layer.include and layer.exclude:
            details.append(network.detail("a layer may have include rules or exclude rules, not both "
                                          "(Caffe refuses it).", layer.name))
    if details:
        raise NetworkError("A layer has both include and exclude rules.", details)
    for layer in network.net.layer:
        if layer.type == "Python":
            module = layer.python_param.module
            if module != LAYER_MODULE:
                details.append(network.detail(
                    f"Python layers must use module '{LAYER_MODULE}' (the uploaded file); "
                    f"'{module}' is not allowed.", layer.name))
            elif not layer.python_param.layer:
                details.append(network.detail("python_param.layer (the class name) is missing.", layer.name))
    if details:
        raise NetworkError("The network uses a Python module other than the uploaded layer file.", details)
    for stage in ("train", "val", "deploy"):
        produced = _given(network.net, stage)
        for layer in filtered(network.net, stage):
            for bottom in layer.bottom:
                if bottom not in produced:
                    details.append(network.detail(
                        f"bottom blob '{bottom}' is not produced by any earlier layer in the "
                        f"{stage} net.", layer.name, stage=stage))
            produced.update(layer.top)
        if details:
            raise NetworkError(f"A layer reads a blob that nobody produces in the {stage} net.", details)


def has_data_layers(net: Message) -> bool:
    """Whether the net brings its own data layers (DIGITS adds them when not)."""
    return any(layer.type in DATA_TYPES for layer in net.layer)


def _given(net: Message, stage: str) -> set[str]:
    # Blobs a stage net has before its first layer: the Data layers DIGITS
    # adds (train/val) or its deploy input, always named `data` (plus the
    # old name, the Data layers' first top, that deploy_net falls back to).
    if stage == "deploy":
        return {DEPLOY_INPUT} | {layer.top[0] for layer in net.layer if layer.type == "Data" and layer.top}
    return set() if has_data_layers(net) else {DEPLOY_INPUT, digits_net.LABEL}


STANDARD_DIR = Path(__file__).resolve().parent / "standard_networks"
_STANDARD_NAMES = {"lenet": "LeNet", "alexnet": "AlexNet", "googlenet": "GoogLeNet",
                   "fcn": "FCN-small (segmentation)"}


def standard_networks() -> dict[str, str]:
    """Standard network id -> display name (LeNet, AlexNet, GoogLeNet)."""
    return {stem: _STANDARD_NAMES.get(stem, stem)
            for stem in sorted(p.stem for p in STANDARD_DIR.glob("*.prototxt"))}


def standard_network_text(name: str | None) -> str | None:
    """A standard network's prototxt, or None for an unknown name."""
    if name not in standard_networks():
        return None
    return (STANDARD_DIR / f"{name}.prototxt").read_text()


def python_layers(net: Message) -> list[Message]:
    """Every Python layer of the net."""
    return [layer for layer in net.layer if layer.type == "Python"]


@dataclass
class DatasetInfo:
    """What filling a network needs to know about a dataset."""

    path: Path
    num_classes: int
    image_shape: list[int]          # [C, H, W]
    train_count: int
    val_count: int
    has_mean: bool = True
    kind: str = "classification"    # or "segmentation": features + labels LMDBs per stage
    backend: str = "lmdb"           # or "hdf5" (DIGITS's backend=hdf5: fed by HDF5Data layers)


def _data_stage(layer: Message) -> str | None:
    stages = layer_stages(layer)
    if "train" in stages and "val" not in stages:
        return "train"
    if "val" in stages and "train" not in stages:
        return "val"
    return None


def fill(network: Network, dataset: DatasetInfo | None, batch_size: int | None,
         transform: dict | None = None) -> dict:
    """Fill Data layers without a source and unsized InnerProducts from the
    dataset, in place; ``transform`` holds DIGITS's data options (use_mean,
    crop_size) for the dataset-fed layers. Returns {"train_batch",
    "val_batch", "data_top"}."""
    out = {"train_batch": None, "val_batch": None, "data_top": None}
    if dataset is not None and dataset.kind == "segmentation" and (transform or {}).get("crop_size"):
        raise NetworkError("Crop size does not apply to a segmentation dataset: the labels would not be cropped.",
                           [{"field": "crop_size", "file": network.filename, "line": None, "layer": None,
                             "stage": "parse", "message": "a crop would cut the images but not their labels: "
                             "leave crop_size empty for a segmentation dataset"}])
    if not has_data_layers(network.net):
        if dataset is None:
            raise NetworkError("The network has no Data layers: choose a dataset to feed it.",
                               [{"field": "dataset", "file": network.filename, "line": None, "layer": None,
                                 "stage": "parse", "message": "DIGITS adds train-data / val-data layers "
                                 "fed from the dataset"}])
        digits_net.add_data_layers(network.net, network.layer_lines,
                                   split_label=dataset.kind == "segmentation")
    for layer in network.net.layer:
        if layer.type == "HDF5Data" and dataset is not None and dataset.backend == "hdf5" \
                and not layer.hdf5_data_param.source:
            _fill_hdf5(network, layer, dataset, batch_size, transform or {}, out)
            continue
        if layer.type != "Data":
            continue
        stage = _data_stage(layer)
        if stage is None:
            raise NetworkError("A Data layer must be limited to the train or the val stage.",
                               [network.detail("add include { stage: \"train\" } or "
                                               "include { stage: \"val\" }", layer.name)])
        if dataset is not None and dataset.backend == "hdf5" and not layer.data_param.source:
            _fill_hdf5(network, layer, dataset, batch_size, transform or {}, out)
            continue
        p = layer.data_param
        if not p.source:
            if dataset is None:
                raise NetworkError("The network's Data layers have no source: choose a dataset.",
                                   [network.detail("data_param.source is empty and no dataset was "
                                                   "given", layer.name, field_name="dataset")])
            p.source = str(dataset.path / ("train_db" if stage == "train" else "val_db"))
            p.backend = caffe_pb2().DataParameter.LMDB
            # DIGITS feeds a segmentation dataset by top name: `label` reads the
            # label images (class indices: no mean, scale or crop), any other
            # top the features.
            is_label = dataset.kind == "segmentation" and layer.top[:1] == [digits_net.LABEL]
            if dataset.kind == "segmentation":
                p.source = str(Path(p.source) / ("labels" if is_label else "features"))
            if not is_label:
                digits_net.apply_transform(
                    layer, mean_file=str(dataset.path / "mean.binaryproto") if dataset.has_mean else None,
                    use_mean=(transform or {}).get("use_mean"), crop_size=(transform or {}).get("crop_size"))
        if batch_size:   # DIGITS sets the train and the val batch alike
            p.batch_size = batch_size
        if not p.batch_size:
            p.batch_size = batch_size or 64
        out[f"{stage}_batch"] = out[f"{stage}_batch"] or p.batch_size
        out["data_top"] = out["data_top"] or (layer.top[0] if layer.top else None)
    if dataset is not None:
        for layer in network.net.layer:
            if layer.type == "InnerProduct" and not layer.inner_product_param.HasField("num_output"):
                layer.inner_product_param.num_output = dataset.num_classes
        digits_net.drop_unanswerable_accuracy(network.net, network.layer_lines, dataset.num_classes)
    return out


def _fill_hdf5(network: Network, layer: Message, dataset: DatasetInfo, batch_size: int | None,
               transform: dict, out: dict) -> None:
    """A dataset-fed data layer of an HDF5 dataset becomes what DIGITS's
    caffe_train.py makes of it: an HDF5Data layer reading the split's list
    of .h5 files. Caffe's HDF5Data applies no transform_param, so a crop or
    a mean pixel cannot apply (DIGITS asserts "HDF5Data layer does not
    support cropping / mean subtraction": here a 400 naming the field);
    use_mean=image, DIGITS's default, is what DIGITS also lets through and
    Caffe ignores: the pixels are fed as stored, 0..255."""
    from app.caffe.datasets import hdf5_list_file
    stage = _data_stage(layer)
    if stage is None:
        raise NetworkError("A data layer must be limited to the train or the val stage.",
                           [network.detail("add include { stage: \"train\" } or "
                                           "include { stage: \"val\" }", layer.name)])
    if transform.get("crop_size") or layer.transform_param.crop_size:
        raise NetworkError("HDF5Data layer does not support cropping (the dataset's backend is hdf5).",
                           [network.detail("leave crop_size empty for an hdf5 dataset, or build the dataset "
                                           "with backend=lmdb", layer.name, field_name="crop_size")])
    if transform.get("use_mean") == "pixel":
        raise NetworkError("HDF5Data layer does not support mean subtraction (the dataset's backend is hdf5).",
                           [network.detail("use_mean=pixel cannot apply to an hdf5 dataset: use none, or build "
                                           "the dataset with backend=lmdb", layer.name, field_name="use_mean")])
    if layer.HasField("transform_param") and str(layer.transform_param):
        raise NetworkError("HDF5Data layer applies no transform_param (the dataset's backend is hdf5).",
                           [network.detail("remove transform_param from this data layer, or build the dataset "
                                           "with backend=lmdb", layer.name, field_name="network")])
    size = batch_size or layer.data_param.batch_size or layer.hdf5_data_param.batch_size or 64
    layer.type = "HDF5Data"
    layer.ClearField("data_param")
    layer.ClearField("transform_param")
    layer.hdf5_data_param.source = str(hdf5_list_file(dataset.path, "train_db" if stage == "train" else "val_db"))
    layer.hdf5_data_param.batch_size = size
    out[f"{stage}_batch"] = out[f"{stage}_batch"] or size
    out["data_top"] = out["data_top"] or (layer.top[0] if layer.top else None)


def deploy_net(network: Network, dataset: DatasetInfo | None, data_top: str | None) -> Message:
    """The deploy-stage net; dataset-fed Data layers become one Input layer
    named `data` (DIGITS's deploy input)."""
    pb = caffe_pb2()
    net = pb.NetParameter(name=network.net.name)
    layers = filtered(network.net, "deploy")
    if dataset is not None and data_top:
        layers = [layer for layer in layers if layer.type not in DATA_TYPES]
        data_top = digits_net.deploy_input_name(layers, data_top)
        c, h, w = dataset.image_shape
        crop = next((layer.transform_param.crop_size for layer in network.net.layer
                     if layer.type == "Data" and layer.transform_param.crop_size), 0)
        if crop:
            h = w = crop
        net.layer.add(name=data_top, type="Input", top=[data_top]).input_param.shape.add(dim=[1, c, h, w])
    for layer in layers:
        copy = net.layer.add()
        copy.CopyFrom(layer)
        del copy.include[:]
        del copy.exclude[:]
    return net


# Fields naming files Caffe opens; they must stay inside the allowed roots.
_PATH_FIELDS = (("data_param", "source"), ("image_data_param", "source"),
                ("image_data_param", "root_folder"), ("hdf5_data_param", "source"),
                ("window_data_param", "source"), ("window_data_param", "root_folder"),
                ("transform_param", "mean_file"), ("hdf5_output_param", "file_name"))


def check_paths(network: Network, allowed: list[Path]) -> None:
    """Every file path in the net must resolve inside one of ``allowed``."""
    roots = [r.resolve() for r in allowed]
    details = []
    for layer in network.net.layer:
        for sub, name in _PATH_FIELDS:
            value = getattr(getattr(layer, sub), name)
            if not value:
                continue
            resolved = Path(value).resolve() if Path(value).is_absolute() else None
            if resolved is None or not any(resolved.is_relative_to(r) for r in roots):
                details.append(network.detail(
                    f"{sub}.{name} '{value}' points outside this job's and its dataset's "
                    "directories.", layer.name))
    if details:
        raise NetworkError("The network names files outside the job's directories.", details)


def check_sizes(network: Network) -> None:
    """Refuse absurd blob shapes before Caffe tries to allocate them."""
    details = []
    for layer in network.net.layer:
        shapes = list(layer.input_param.shape) + list(layer.dummy_data_param.shape)
        for shape in shapes:
            n = 1
            for d in shape.dim:
                n *= max(int(d), 1)
            if n > MAX_BLOB_ELEMENTS:
                details.append(network.detail(
                    f"a blob of {n:.3g} elements is larger than the {MAX_BLOB_ELEMENTS:.3g} allowed.",
                    layer.name))
        if layer.type == "InnerProduct" and layer.inner_product_param.num_output > 1 << 24:
            details.append(network.detail("inner_product_param.num_output is absurdly large.", layer.name))
    if details:
        raise NetworkError("The network asks for blobs too large to allocate.", details)


def to_text(message: Message) -> str:
    """Emit prototxt text."""
    return text_format.MessageToString(message)
