"""Flask-WTF forms (CSRF-protected) for the pages."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (BooleanField, DecimalField, IntegerField, PasswordField, SelectChoice, SelectField, StringField,
                     TextAreaField)
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from app.caffe.solver import LR_POLICIES, SOLVER_TYPES


class JobForm(FlaskForm):
    """New job: network, Python layer, dataset and every solver field."""

    name = StringField("Job name", validators=[Optional()])
    standard_network = SelectField("Standard network", choices=[SelectChoice("", "— custom —")], validators=[Optional()])
    network = FileField("Network prototxt file")
    network_text = TextAreaField("…or paste the network (all-in-one prototxt)")
    python_layer = FileField("Python layer file (saved as digits_python_layers.py), or several .py files "
                             "or one zip of them")
    python_layer_main = StringField("File that holds the layers (with several files; default: the one "
                                    "defining the network's layer classes)", validators=[Optional(), Length(max=300)])
    dataset = SelectField("Dataset", choices=[SelectChoice("", "— none (network brings its own data) —")],
                          validators=[Optional()])
    train_epochs = DecimalField("Training epochs", default=30, validators=[Optional(), NumberRange(min=0)])
    max_iter = IntegerField("…or iterations (wins over epochs)", validators=[Optional(), NumberRange(min=1)])
    # Text, not numbers: a list (0.01,0.02) makes a sweep, one job per combination.
    batch_size = StringField("Batch size (overrides the network's; a list such as 32,64 makes a sweep)",
                             validators=[Optional(), Length(max=200)])
    iter_size = IntegerField("Batch accumulation (iter_size: batches added up per iteration)",
                             validators=[Optional(), NumberRange(min=1)])
    val_interval = DecimalField("Validation interval (epochs)", default=1, validators=[Optional()])
    snapshot_interval = DecimalField("Snapshot interval (epochs)", default=1, validators=[Optional()])
    solver_type = SelectField("Solver", choices=[SelectChoice(s) for s in SOLVER_TYPES], default="SGD")
    learning_rate = StringField("Base learning rate (a list such as 0.01,0.02 makes a sweep)", default="0.01",
                                validators=[Optional(), Length(max=200)])
    group_name = StringField("Group name (the jobs of a sweep share it)", validators=[Optional(), Length(max=200)])
    lr_policy = SelectField("Learning-rate policy", choices=[SelectChoice(p) for p in LR_POLICIES], default="fixed")
    gamma = DecimalField("gamma (step, multistep, exp, inv, sigmoid)", places=None, validators=[Optional()])
    power = DecimalField("power (inv, poly)", places=None, validators=[Optional()])
    stepsize = IntegerField("stepsize in iterations (step, sigmoid)", validators=[Optional()])
    stepvalues = StringField("step values in iterations, comma separated (multistep)", validators=[Optional()])
    random_seed = IntegerField("Random seed", validators=[Optional()])
    device = SelectField("Device", choices=[SelectChoice("auto", "auto (a free GPU, else CPU)"),
                                            SelectChoice("cpu", "CPU"),
                                            SelectChoice("gpu", "GPU (wait for a free one)")], default="auto")
    gradient_check = SelectField("A Python layer's backward fails the gradient check",
                                 choices=[SelectChoice("warn", "warn"),
                                          SelectChoice("error", "refuse the upload")], default="warn")
    python2 = SelectField("A Python 2 layer file",
                          choices=[SelectChoice("refuse", "refuse it (validation shows the Python 3 hints)"),
                                   SelectChoice("convert", "convert it first, keeping Python 2's meaning "
                                                           "(/ floors on integers)")], default="refuse")
    solver = FileField("Full solver prototxt (optional; the fields above override it)")
    crop_size = IntegerField("Crop size (random crops in training, the centre at validation and inference)",
                             validators=[Optional(), NumberRange(min=1)])
    use_mean = SelectField("Subtract mean", choices=[SelectChoice("image", "image"), SelectChoice("pixel", "pixel"),
                                                     SelectChoice("none", "none")], default="image")
    shuffle = BooleanField("Shuffle the training data (a per-job shuffled copy of the train set)")
    auto_retry = BooleanField("Start again automatically if its worker is lost before the first snapshot",
                              default=True)
    previous_job = StringField("Start from a previous job (its id)", validators=[Optional(), Length(max=80)])
    previous_snapshot = StringField("…its snapshot: epoch, or -1 for the last", default="-1",
                                    validators=[Optional(), Length(max=20)])
    pretrained_model = SelectField("…or from a pretrained model", choices=[SelectChoice("", "— none —")],
                                   validators=[Optional()])
    weights = FileField("…or upload pretrained weights (.caffemodel; layers load by name, renamed ones "
                        "start fresh)")


class ActionForm(FlaskForm):
    """An empty form: CSRF token for abort/clone/delete/resume buttons."""


class LoginForm(FlaskForm):
    """Username and password."""

    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class DatasetForm(FlaskForm):
    """New dataset from an image archive (one folder per class)."""

    type = SelectField("Dataset type", choices=[SelectChoice("classification", "Classification (one folder per class)"),
                                                SelectChoice("segmentation", "Segmentation (images/ + labels/)")],
                       default="classification")
    name = StringField("Dataset name", validators=[DataRequired(), Length(max=200)])
    archive = FileField("Archive (zip or tar.gz, one folder per class)")
    # Shown only where the administrator set data roots (app.services.runtime.data_roots).
    folder = StringField("Or a folder on the server", validators=[Optional(), Length(max=4096)])
    image_width = IntegerField("Image width", default=28, validators=[NumberRange(min=1, max=1024)])
    image_height = IntegerField("Image height", default=28, validators=[NumberRange(min=1, max=1024)])
    channels = SelectField("Channels", choices=[SelectChoice("1", "1 (grayscale)"), SelectChoice("3", "3 (RGB)")],
                           default="3")
    resize_mode = SelectField("Resize", choices=[SelectChoice(m) for m in ("squash", "crop", "fill", "half_crop")],
                              default="squash")
    val_percent = IntegerField("Validation %", default=25, validators=[NumberRange(min=0, max=90)])


class InferForm(FlaskForm):
    """Images to classify with a trained job."""

    image = FileField("Images")
    snapshot = SelectField("Snapshot", validators=[Optional()])
