import numpy as np

from models import DATASETS, MODELS, get_model, recipe_path
from models.digits_cnn import INPUT_SHAPE, NUM_CLASSES, load_dataset


def test_registry_is_consistent():
    for name, entry in MODELS.items():
        assert entry.dataset in DATASETS
        assert recipe_path(name) is not None and recipe_path(name).is_file()


def test_dataset_is_deterministic_and_preprocessed():
    a, b = load_dataset(), load_dataset()
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["x_train"].shape[1:] == INPUT_SHAPE
    assert len(a["x_test"]) == 450 and len(a["x_train"]) == 1347
    # pixel / 16: the values are exactly the 17 levels 0/16 .. 16/16
    levels = np.unique(np.concatenate([a["x_train"].ravel(), a["x_test"].ravel()]))
    assert np.allclose(levels * 16, np.round(levels * 16)) and levels.max() == 1.0


def test_architecture_has_the_phone_ops(env):
    model = get_model("digits_cnn").build(env.keras)
    kinds = {type(l).__name__ for l in model.layers}
    assert {"Conv2D", "BatchNormalization", "ReLU", "DepthwiseConv2D", "MaxPooling2D",
            "Dense"} <= kinds
    assert tuple(model.output_shape) == (None, NUM_CLASSES)
