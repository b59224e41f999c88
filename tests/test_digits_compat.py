"""Issue 23: DIGITS users' data, scripts and archives as they are, over
HTTP against the real server (gunicorn, worker, root launcher, sandbox,
real Caffe): server folders under the data roots (LAYERBENCH_DATA_ROOTS),
script login (curl -c cookies -F username -F password), DIGITS's JSON keys
(docs/API.md), and archives DIGITS's examples/classification reads."""
from __future__ import annotations

import grp
import http.cookiejar
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from digits_http import Digits, Reply, colour_imageset, png, serve
from helpers import LENET_SEED, SEED_LAYER, initial_token
from helpers import CAFFE_NETWORK


@dataclass
class Served:
    url: str
    instance: Path
    data: Path      # a shared data root
    home: Path      # the per-user roots' parent: home/{user}
    token: str

    def digits(self) -> Digits:
        return Digits(self.url, self.token)

    def password(self) -> str:
        lines = (self.instance / "initial-credentials.txt").read_text().splitlines()
        return dict(line.split(": ", 1) for line in lines)["password"]


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, blob in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)


def _digit_files() -> tuple[dict[str, bytes], list[int]]:
    # Three 28x28 images of each digit (scikit-learn's), as class folders.
    from app.caffe.datasets import sample_digits_arrays
    images, labels = sample_digits_arrays()
    picked = [i for digit in range(10) for i in list(*(labels == digit).nonzero())[-3:]]
    return {f"{labels[i]}/{i}.png": png(images[i, 0]) for i in picked}, [int(labels[i]) for i in picked]


@pytest.fixture(scope="module")
def served(sample_datasets):
    """One server with two data roots: ``data`` (everyone's) and
    ``home/{user}`` (each user's own). Its base lives outside pytest's
    directory, whose mode a concurrent pytest session resets (conftest)."""
    base = Path(tempfile.mkdtemp(prefix="lb-compat-", dir="/tmp"))
    data, home = base / "data", base / "home"
    old = os.umask(0o022)
    try:
        colours = colour_imageset()
        _write(data / "colours", {k.split("/", 1)[1]: v for k, v in colours.items()})
        _write(data / "colours_val", {k.split("/", 1)[1]: v for k, v in colour_imageset(per_class=3).items()})
        _write(data / "colours_test", {k.split("/", 1)[1]: v for k, v in colour_imageset(per_class=2).items()})
        _write(data / "digits", _digit_files()[0])
        _write(data / "layers", {"seed_layer.py": SEED_LAYER.encode()})
        _write(home / "admin" / "mine", {k.split("/", 1)[1]: v for k, v in colours.items()})
        _write(home / "bob" / "theirs", {k.split("/", 1)[1]: v for k, v in colours.items()})
        (data / "escape").symlink_to("/etc")
        _write(data / "locked", {k.split("/", 1)[1]: v for k, v in colours.items()})
        _write(data / "group_only", {k.split("/", 1)[1]: v for k, v in colours.items()})
    finally:
        os.umask(old)
    for d in (base, data, home):
        d.chmod(0o755)
    (data / "locked").chmod(0o700)                     # root's alone: the service user cannot read it
    if os.geteuid() == 0:
        os.chown(data / "group_only", 0, grp.getgrnam("layerbench").gr_gid)
    (data / "group_only").chmod(0o750)                 # the service user's group, not the sandbox's uid
    env = {"LAYERBENCH_DATA_ROOTS": f"{data}:{home}/{{user}}"}
    try:
        with serve(base, sample_datasets, env) as (url, instance):
            yield Served(url, instance, data, home, initial_token(instance))
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def model(served):
    """A model trained on sample-digits with DIGITS's test network and the
    mean subtracted per pixel (what DIGITS's example.py does): (create
    answer, final model JSON)."""
    d = served.digits()
    r = d.post("/models/images/classification.json", {
        "model_name": "compat", "dataset": "sample-digits", "method": "custom", "custom_network": CAFFE_NETWORK,
        # A small learning rate keeps the probabilities spread (DIGITS's net on
        # raw pixels saturates to 100 % at 0.01): the top-5 comparison then means something.
        "train_epochs": 1, "batch_size": 64, "learning_rate": 1e-6, "use_mean": "pixel", "framework": "caffe",
        "random_seed": 7, "shuffle": "false"})
    assert r.status == 200, r.text[:2000]
    created = r.json
    assert d.wait("models", created["id"]) == "Done"
    return created, d.get(f"/models/{created['id']}.json").json


@pytest.mark.slow
def test_datasets_from_server_folders(served):
    d = served.digits()
    base = {"dataset_name": "folders", "method": "folder", "resize_channels": 3, "resize_width": 10,
            "resize_height": 10, "backend": "lmdb", "encoding": "png"}
    # DIGITS's own call: train, separate validation and test folders, by path.
    r = d.post("/datasets/images/classification.json", dict(
        base, folder_train=str(served.data / "colours"), has_val_folder="y",
        folder_val=str(served.data / "colours_val"), has_test_folder="y",
        folder_test=str(served.data / "colours_test")))
    assert r.status == 200, r.text[:2000]
    assert {"id", "name", "status", "CreateDbTasks", "ParseFolderTasks"} <= set(r.json)   # the whole job JSON
    ds_id = r.json["id"]
    assert d.wait("datasets", ds_id) == "Done", d.get(f"/datasets/{ds_id}.json").text
    info = d.get(f"/datasets/{ds_id}.json").json
    assert [(t["name"], t["entries"]) for t in info["CreateDbTasks"]] == [
        ("Create DB (train)", 24), ("Create DB (val)", 9), ("Create DB (test)", 6)]
    assert all((t["image_width"], t["image_height"], t["image_channels"], t["backend"]) == (10, 10, 3, "lmdb")
               for t in info["CreateDbTasks"])
    # One parse per folder, as DIGITS's: the training folder's, then the
    # separate validation and test folders'.
    assert info["ParseFolderTasks"] == [
        {"name": "Parse Folder (train/val)", "label_count": 3, "train_count": 24, "val_count": 0, "test_count": 0},
        {"name": "Parse Folder (val)", "label_count": 3, "train_count": 0, "val_count": 9, "test_count": 0},
        {"name": "Parse Folder (test)", "label_count": 3, "train_count": 0, "val_count": 0, "test_count": 6}]
    assert info["labels"] == ["blue", "green", "red"]

    # One folder, split by folder_pct_val; and the same through /api/v1 (folder=).
    r = d.post("/datasets/images/classification.json", dict(base, folder_train=str(served.data / "colours"),
                                                             folder_pct_val=25))
    assert r.status == 200 and d.wait("datasets", r.json["id"]) == "Done"
    assert d.get(f"/datasets/{r.json['id']}.json").json["ParseFolderTasks"][0]["val_count"] == 6
    r = d.post("/api/v1/datasets", {"name": "api folder", "folder": str(served.home / "admin" / "mine"),
                                    "image_width": 10, "image_height": 10})
    assert r.status == 202, r.text[:2000]                       # the user's own sub-root (home/{user})
    assert d.wait("datasets", r.json["id"]) == "Done"

    def refused(folder: str, *words: str, field: str = "folder_train") -> None:
        reply = d.post("/datasets/images/classification.json", dict(base, folder_train=folder))
        assert reply.status == 400, (folder, reply.status, reply.text[:500])
        message = reply.json["message"]
        assert reply.json["details"][0]["field"] == field and all(w in message for w in words), message

    roots = (str(served.data), str(served.home / "admin"))
    refused("/etc", *roots)                                          # outside every root: the roots are named
    refused(str(served.data / "escape"), *roots, "links resolved")   # a link out of a root
    refused(str(served.data / ".." / "instance"), *roots)
    refused(str(served.home / "bob" / "theirs"), *roots)             # another user's sub-root
    refused("relative/path", "absolute")
    refused(str(served.data / "nothing-here"), "does not exist")
    refused(str(served.data / "layers" / "seed_layer.py"), "not a folder")
    if os.geteuid() == 0:    # privilege separation: the web is `layerbench`, runs get a uid of their own
        refused(str(served.data / "locked"), "layerbench", "cannot read", str(served.data / "locked"))
        refused(str(served.data / "group_only"), "sandbox cannot read", str(served.data / "group_only"))
    r = d.post("/datasets/images/classification.json", dict(base, folder_train=str(served.data / "colours"),
                                                             has_val_folder="y"))
    assert r.status == 400 and r.json["details"][0]["field"] == "folder_val"


@pytest.mark.slow
def test_classify_lists_and_layer_file_from_server(served, model):
    d = served.digits()
    job_id = model[0]["id"]
    files, truth = _digit_files()
    relative = "".join(f"{name} {label}\n" for name, label in zip(files, truth)).encode()
    r = d.post(f"/models/images/classification/classify_many.json?job_id={job_id}",
               {"image_list": ("list.txt", relative), "image_folder": str(served.data / "digits")})
    assert r.status == 200, r.text[:2000]
    by_folder = r.json["classifications"]
    assert len(by_folder) == 30 and not r.json["errors"] and r.json["accuracy"]["count"] == 30
    absolute = "".join(f"{served.data / 'digits' / name} {label}\n" for name, label in zip(files, truth))
    absolute += f"{served.data / 'digits' / 'missing.png'} 0\n"
    r = d.post(f"/models/images/classification/classify_many.json?job_id={job_id}",
               {"image_list": ("list.txt", absolute.encode())})
    assert r.status == 200, r.text[:2000]
    assert list(r.json["classifications"].values()) == list(by_folder.values())   # the same images, read the same
    assert list(r.json["errors"]) == [str(served.data / "digits" / "missing.png")]
    r = d.post(f"/models/images/classification/top_n?job_id={job_id}",
               {"image_list": ("list.txt", relative), "image_folder": str(served.data / "digits")})
    assert r.status == 200 and all(f"<th>{k}</th>" in r.text for k in range(10))
    for listing, folder in ((b"/etc/passwd 0\n", None), (b"x.png 0\n", "/etc"),
                            (b"../../../etc/passwd 0\n", str(served.data / "digits"))):
        fields = {"image_list": ("list.txt", listing)} | ({"image_folder": folder} if folder else {})
        r = d.post(f"/models/images/classification/classify_many.json?job_id={job_id}", fields)
        assert r.status == 400 and str(served.data) in r.json["message"], (listing, r.text[:500])

    # python_layer_server_file: read in the sandbox, then stored as an upload.
    form = {"model_name": "server layer", "dataset": "sample-digits", "method": "custom",
            "custom_network": LENET_SEED, "python_layer_from_client": "false", "train_epochs": 1,
            "python_layer_server_file": str(served.data / "layers" / "seed_layer.py")}
    r = d.post("/models/images/classification.json", form)
    assert r.status == 200, r.text[:2000]
    assert r.json["python_layer"]["original_filename"] == "seed_layer.py"
    assert d.post(f"/models/{r.json['id']}/abort").status in (200, 403)
    assert d.call("DELETE", f"/models/{r.json['id']}").status == 200
    r = d.post("/models/images/classification.json", dict(form, python_layer_server_file="/etc/hostname"))
    assert r.status == 400 and str(served.data) in r.json["message"]


@pytest.mark.slow
def test_model_json_has_digits_keys(served, model):
    import caffe

    from app import __version__
    created, info = model
    # The create answer is the job JSON, as DIGITS's (docs/API.md).
    assert {"caffe version", "digits version", "image dimensions", "image resize mode", "labels file",
            "mean file", "snapshot file", "username", "job id", "creation time"} <= set(created)
    assert created["snapshot file"] == "no snapshots"
    assert info["caffe version"] == str(caffe.__version__) and info["digits version"] == __version__
    assert info["image dimensions"] == [28, 28, 1] and info["image resize mode"] == "squash"
    assert (info["labels file"], info["mean file"], info["network file"]) == \
        ("labels.txt", "mean.binaryproto", "original.prototxt")
    assert info["snapshot file"] == "snapshot_iter_22.caffemodel" and info["username"] == "admin"
    d = served.digits()
    assert d.get(f"{info['directory']}/{info['labels file']}").text.split() == [str(k) for k in range(10)]
    assert "InnerProduct" in d.get(f"{info['directory']}/{info['network file']}").text
    assert d.get("/index.json").json["version"] == __version__


@pytest.mark.slow
def test_archive_runs_with_digits_example(served, model, tmp_path):
    from google.protobuf import text_format

    import digits_example
    from app.caffe.proto import caffe_pb2
    d = served.digits()
    job_id = model[0]["id"]
    r = d.get(f"/models/{job_id}/download.tar.gz")
    assert r.status == 200
    (tmp_path / "model.tar.gz").write_bytes(r.body)
    with tarfile.open(tmp_path / "model.tar.gz") as tf:
        names = set(tf.getnames())
    assert {"deploy.prototxt", "original.prototxt", "solver.prototxt", "train_val.prototxt", "labels.txt",
            "mean.binaryproto", "info.json", "snapshot_iter_22.caffemodel"} <= names
    extracted = tmp_path / "model"
    digits_example.unzip_archive(str(tmp_path / "model.tar.gz"), str(extracted))
    deploy = text_format.Parse((extracted / "deploy.prototxt").read_text(), caffe_pb2().NetParameter())
    assert list(deploy.input) == ["data"] and list(deploy.input_shape[0].dim) == [1, 1, 28, 28]
    assert all(layer.type != "Input" for layer in deploy.layer)
    mean = caffe_pb2().BlobProto()
    mean.ParseFromString((extracted / "mean.binaryproto").read_bytes())
    assert not mean.HasField("shape") and (mean.num, mean.channels, mean.height, mean.width) == (1, 1, 28, 28)

    files, _ = _digit_files()
    image = tmp_path / "digit.png"
    image.write_bytes(next(iter(files.values())))
    ours = d.post(f"/models/images/classification/classify_one.json?job_id={job_id}",
                  {"image_file": ("digit.png", image.read_bytes())})
    assert ours.status == 200, ours.text[:1000]
    theirs = digits_example.classify_with_archive(str(tmp_path / "model.tar.gz"), str(tmp_path / "again"),
                                                  [str(image)], use_gpu=False)[0]
    # DIGITS's example rounds to 1e-4 %, classify_one to 1e-2 % (as DIGITS did): probabilities within 1e-4.
    assert 50 < theirs[0][1] < 99.9 and theirs[1][1] > 0.1      # not a saturated 100 / 0 / 0 ...
    assert [label for label, _ in theirs] == [label for label, _ in ours.json["predictions"]], (theirs, ours.json)
    for (_, p_theirs), (_, p_ours) in zip(theirs, ours.json["predictions"]):
        assert abs(p_theirs - p_ours) / 100 <= 1e-4, (theirs, ours.json)


class _CookieClient:
    """curl -c/-b cookies: a cookie jar, multipart forms, no redirects followed."""

    def __init__(self, url: str) -> None:
        from digits_http import _NoRedirect
        self.url, self.jar = url, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def post(self, path: str, fields: dict, headers: dict | None = None) -> Reply:
        boundary = uuid.uuid4().hex
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in fields.items()) + f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})
        try:
            with self.opener.open(req, timeout=60) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read())


@pytest.mark.slow
def test_script_login_as_digits_scripts_do(served):
    password = served.password()
    net = {"custom_network": CAFFE_NETWORK}
    # curl localhost/login -c digits.cookie -XPOST -F username=... -F password=...
    script = _CookieClient(served.url)
    r = script.post("/login", {"username": "admin", "password": password})
    assert r.status == 303 and any(c.name == "session" for c in script.jar)
    assert script.post("/models/visualize-network", net).status == 200   # -b digits.cookie: a write, no token
    # Its session's writes are judged by Origin/Referer: a cross-site post is refused.
    assert script.post("/models/visualize-network", net, {"Origin": "http://evil.example"}).status == 400
    assert script.post("/models/visualize-network", net, {"Sec-Fetch-Site": "cross-site"}).status == 400
    assert script.post("/models/visualize-network", net, {"Referer": "http://evil.example/x"}).status == 400
    assert script.post("/models/visualize-network", net, {"Origin": served.url}).status == 200

    # Login CSRF: a cross-site login without a session is refused, as is a
    # browser's (it has the login page's session) without the form token.
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Referer": "http://evil.example/page"}):
        r = _CookieClient(served.url).post("/login", {"username": "admin", "password": password}, headers)
        assert r.status == 400, headers
    browser = _CookieClient(served.url)
    browser.opener.open(served.url + "/login").read()                  # the page sets the session cookie
    assert browser.post("/login", {"username": "admin", "password": password},
                        {"Origin": served.url}).status == 400
    # DIGITS's user name alone: 401, saying what to send.
    r = _CookieClient(served.url).post("/login", {"username": "admin"})
    assert r.status == 401 and "password" in r.text and "token" in r.text.lower()
    assert _CookieClient(served.url).post("/login", {"username": "admin", "password": "wrong"}).status == 401


def test_launcher_binds_data_roots_read_only_and_nothing_else(tmp_path):
    """app.services.runtime.launcher.check: a read-only bind inside a configured data
    root (a {user} component matching one name) is accepted; a writable one,
    one through a link, one outside, or a root over the jobs dir is not."""
    from app.services.runtime import data_roots
    from app.services.runtime.launcher import Refused, check
    jobs, data, home = tmp_path / "jobs", tmp_path / "data", tmp_path / "home"
    for d in (jobs / "x", data / "set", home / "ann" / "ds", home / "ann" / "other"):
        d.mkdir(parents=True)
    (data / "link").symlink_to(data / "set")
    from app.core import config
    cfg = config.load(environ={}, overrides={
        "JOBS_DIR": jobs, "INSTANCE_DIR": tmp_path / "inst", "CAFFE_PYTHON": "/py",
        "DATA_ROOTS": f"{data}:{home}/{{user}}/ds:{tmp_path}"})     # the last holds the jobs dir: ignored
    assert data_roots.patterns(cfg) == [str(data), f"{home}/{{user}}/ds"]

    def start(**spec) -> dict:
        return {"spec": {"argv": ["/py", "-m", "app.contained.gather", str(jobs / "x" / "p.json")],
                         "writable": [str(jobs / "x")], **spec}, "limits": {}}

    for ok in (data, data / "set", home / "ann" / "ds"):
        assert check(start(read_only=[str(ok)]), cfg)[0].read_only == [ok]
    for bad in (data / "link", home / "ann" / "other", home / "ann", tmp_path, data / ".." / "data" / "set"):
        with pytest.raises(Refused):
            check(start(read_only=[str(bad)]), cfg)
    with pytest.raises(Refused):
        check(start(writable=[str(data / "set")]), cfg)      # never writable
    with pytest.raises(Refused):
        check({"spec": {"argv": ["/py", "-m", "app.contained.gather", str(data / "set")]}, "limits": {}}, cfg)
    assert data_roots.roots_for(cfg, "ann") == [data, home / "ann" / "ds"]
    assert data_roots.roots_for(cfg, "../etc") == [data]           # no per-user root for an unsafe name
