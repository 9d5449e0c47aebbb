import numpy as np
import torch

from imgpipe.evaluation.pictures import gradcam_grid, misclassified_grid


def test_misclassified_grid_shows_the_worst_first() -> None:
    images = np.stack([np.full((8, 8, 1), 40 * i, np.uint8) for i in range(5)])
    labels = np.array([0, 0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    sheet = misclassified_grid(images, labels, probabilities, ["x", "y"], tile=20)
    assert sheet.size == (6 * 20, 20 + 14)  # three wrong images: one row of six slots
    # Most confidently wrong first: image 2 (0.9), then image 1 (0.7); image 4 (0.6) too.
    assert sheet.getpixel((10, 10)) == (80, 80, 80)
    assert sheet.getpixel((30, 10)) == (40, 40, 40)
    assert sheet.getpixel((50, 10)) == (160, 160, 160)


def test_gradcam_grid_shows_where_the_wrong_images_were_looked_at() -> None:
    from imgpipe.training.inference import predict_split
    from imgpipe.training.loop import train_classifier
    from tests.conftest import make_split, train_config

    model = train_classifier(make_split(24, seed=1), make_split(8, seed=2), train_config()).model
    split = make_split(3, seed=5)
    probabilities = predict_split(model, split, 8, torch.device("cpu")).numpy()
    told = 1 - probabilities.argmax(1)  # labels that make every prediction a mistake
    sheet = gradcam_grid(model, split.images, told, probabilities, split.classes, tile=40)
    assert sheet.size == (6 * 40, 40 + 14)
    tiles = [np.asarray(sheet.crop((x * 40 + 2, 2, x * 40 + 38, 38))) for x in range(6)]
    # Over a grey image, red minus blue is the heat map's alone: it must vary within a tile.
    heat = [t[..., 0].astype(int) - t[..., 2].astype(int) for t in tiles]
    assert all(h.std() > 1 for h in heat)
    assert not all(np.array_equal(heat[0], h) for h in heat[1:])


def test_gradcam_backward_stops_at_its_layer_with_the_same_maps() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from imgpipe.evaluation.pictures import _gradients_into

    torch.manual_seed(0)
    early, layer = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3)
    model = torch.nn.Sequential(
        early, torch.nn.ReLU(), layer, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3)
    )
    images = torch.rand(4, 1, 12, 12)
    model(images)  # sizes the lazy head
    assert early.bias is not None
    early.bias.requires_grad_(False)  # a flag set before must be kept as it was
    targets = [ClassifierOutputTarget(k % 3) for k in range(4)]

    def maps() -> np.ndarray:
        model.zero_grad(set_to_none=True)
        with GradCAM(model=model.eval(), target_layers=[layer]) as cam:
            return np.asarray(cam(input_tensor=images, targets=targets))

    everything = maps()
    with _gradients_into(layer, model):
        only_the_layer = maps()
        assert early.weight.grad is None  # backward never reached the earlier layer
        assert model[5].weight.grad is None
    np.testing.assert_array_equal(only_the_layer, everything)
    flags = [p.requires_grad for p in model.parameters()]
    assert flags == [True, False, True, True, True, True]
    with _gradients_into(model[1], model):  # a layer without parameters: nothing is frozen
        assert [p.requires_grad for p in model.parameters()] == flags
