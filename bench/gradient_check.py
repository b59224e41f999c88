"""What the gradient check and the layer views (app/contained/gradcheck.py)
add to validation: LeNet + the seed's AccuracyLayer (val only: skipped, no
extra pass) and LeNet + a Python loss in the train net (Caffe's pyloss.py
EuclideanLossLayer on ip2 and a second head): the validation's wall time
as the API answers it and the validator's own `layer_check_ms`, medians."""
from __future__ import annotations

import io

from .common import DATA, LENET_SEED, SEED_LAYER, cleanup, client as common_client, make_app, median, temp_root

PY_LOSS_LAYER = SEED_LAYER + "\n\n" + (DATA / "gradcheck_layers.py").read_text()
PY_LOSS_NET = LENET_SEED.replace('layer {\n    name: "accuracy"', (
    'layer {\n  name: "ip2b"\n  type: "InnerProduct"\n  bottom: "ip2"\n  top: "ip2b"\n'
    '  inner_product_param { num_output: 10 weight_filler { type: "xavier" } }\n}\n'
    'layer {\n  name: "eucl"\n  type: "Python"\n  bottom: "ip2"\n  bottom: "ip2b"\n  top: "eucl"\n'
    '  include { stage: "train" }\n  loss_weight: 1\n'
    '  python_param { module: "digits_python_layers" layer: "EuclideanLossLayer" }\n}\n'
    'layer {\n    name: "accuracy"'))


def _times(client, network: str, layer: str, n: int) -> tuple[list[float], list[float]]:
    seconds, check_ms = [], []
    for _ in range(n):
        r = client.post("/api/v1/validate", data={
            "dataset": "sample-digits", "network": (io.BytesIO(network.encode()), "net.prototxt"),
            "python_layer": (io.BytesIO(layer.encode()), "layers.py")},
            content_type="multipart/form-data").get_json()
        assert r["ok"], r["errors"]
        seconds.append(r["seconds"])
        check_ms.append(r["layer_check_ms"])
    return seconds, check_ms


def run(n: int = 7) -> dict:
    """Medians: validation seconds and the check's milliseconds, per net."""
    root = temp_root()
    try:
        client = common_client(make_app(root))
        _times(client, LENET_SEED, SEED_LAYER, 1)   # warm the page cache once
        out = {}
        for name, net, layer in (("lenet_seed", LENET_SEED, SEED_LAYER),
                                 ("lenet_python_loss", PY_LOSS_NET, PY_LOSS_LAYER)):
            seconds, check_ms = _times(client, net, layer, n)
            out[f"{name}_validate_s"] = round(median(seconds), 3)
            out[f"{name}_check_ms"] = round(median(check_ms), 1)
        out["runs"] = n
        return out
    finally:
        cleanup(root)
