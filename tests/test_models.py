import pytest
import torch
from torch import nn

from lightning_init.models import BlobImagesDataModule, MLPClassifier, SmallCNN, TeacherDataModule, XORDataModule


def test_mlp_layout():
    model = MLPClassifier(in_features=3, num_classes=5, depth=4, width=7, activation="tanh")
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 7), (7, 7), (7, 7), (7, 5)]
    assert sum(isinstance(m, nn.Tanh) for m in model.net) == 3  # no activation after the output layer
    assert model(torch.zeros(2, 3)).shape == (2, 5)


def test_cnn_shapes():
    model = SmallCNN(channels=(4, 4, 8), image_size=16, num_classes=4)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "`depth` must be >= 1, got 0"),
        ({"activation": "relu7"}, "`activation` must be one of"),
        ({"lr": 0.0}, "`lr` must be > 0"),
    ],
)
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**kwargs)


def test_xor_labels_are_xor():
    dm = XORDataModule(repeats=3, batch_size=4)
    dm.setup("fit")
    x, y = dm.train_dataloader().dataset.tensors
    assert len(y) == 12
    bits = (x > 0).long()
    assert torch.equal(y, bits[:, 0] ^ bits[:, 1])
    assert y.float().mean() == 0.5  # balanced: a constant prediction scores exactly 50 %


def test_teacher_data_is_reproducible_and_learnable_by_a_linear_model():
    a, b = TeacherDataModule(n_train=512, seed=3), TeacherDataModule(n_train=512, seed=3)
    a.setup("fit")
    b.setup("fit")
    xa, ya = a.train_dataloader().dataset.tensors
    xb, yb = b.train_dataloader().dataset.tensors
    assert torch.equal(xa, xb)
    assert torch.equal(ya, yb)
    assert torch.equal(ya, (xa @ a.teacher).argmax(1))
    assert len(ya.unique()) == 4


def test_blob_label_is_the_quadrant_of_the_blob():
    dm = BlobImagesDataModule(image_size=16, n_train=64, n_val=8)
    dm.setup("fit")
    x, y = dm.train_dataloader().dataset.tensors
    mean = x.mean(dim=1)  # the blob adds +2 on every channel
    quadrant = torch.stack(
        [
            mean[:, :8, :8].sum((1, 2)),
            mean[:, :8, 8:].sum((1, 2)),
            mean[:, 8:, :8].sum((1, 2)),
            mean[:, 8:, 8:].sum((1, 2)),
        ],
        dim=1,
    ).argmax(dim=1)
    assert torch.equal(quadrant, y)


def test_training_loader_order_is_seeded():
    orders = []
    for _ in range(2):
        dm = TeacherDataModule(n_train=256, batch_size=32, seed=1)
        dm.setup("fit")
        orders.append(torch.cat([y for _, y in dm.train_dataloader()]))
    assert torch.equal(orders[0], orders[1])
